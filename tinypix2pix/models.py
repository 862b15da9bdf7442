"""Generators (the seed's U-Net and the paper's U-Net) and the PatchGAN discriminator.

Both generators map an image in [-1, 1] to an image in [-1, 1]. `residual=True` makes the
generator predict a correction, out = clamp(input + G(input)), so a fresh model starts at
the identity (the trivial baseline of tasks whose input and output share a domain).

Weights are initialised N(0, 0.02) (BatchNorm scale N(1, 0.02), biases 0) as in the
paper's code; the seed used PyTorch's defaults. We follow the paper because the GAN
balance it reports was tuned with that initialisation.
"""

import torch
import torch.nn as nn

from .errors import UserError


def norm_layer(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)
    raise ValueError(f"unknown norm {kind!r}; choose batch or instance")


class ConvBlock(nn.Sequential):
    """(conv3x3 without bias -> norm -> ReLU) x 2, the seed's building block."""

    def __init__(self, cin: int, cout: int, norm: str = "batch"):
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False), norm_layer(norm, cout), nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False), norm_layer(norm, cout), nn.ReLU(inplace=True),
        )


class _Generator(nn.Module):
    """Shared tail: residual connection and the size check."""

    depth: int
    in_channels: int
    out_channels: int
    residual: bool

    def check_size(self, h: int, w: int) -> None:
        m = 2 ** self.depth
        for side in (h, w):
            if side % m:
                lo, hi = (side // m) * m, (side // m + 1) * m
                near = f"{lo} or {hi}" if lo else f"{hi}"
                raise UserError(f"image size {h}x{w} is not divisible by {m} (2**depth, depth={self.depth}); "
                                f"nearest valid sizes for {side}: {near}")

    def finish(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.residual:
            out = x[:, : self.out_channels] + y
            return InwardClamp.apply(out) if torch.is_grad_enabled() else out.clamp(-1, 1)
        return torch.tanh(y)


class InwardClamp(torch.autograd.Function):
    """clamp(v, -1, 1) whose gradient still flows where a step would move v back inside.

    A plain clamp has no gradient at its bounds, so a residual generator would never learn at
    pure white or black input pixels (clipped noise, a saturated sky, an edge map's lines).
    Passing every gradient straight through instead lets pixels drift ever further outside
    where nothing pulls them back (it cost colorize 1.6 dB in the quality benchmark)."""

    @staticmethod
    def forward(ctx, v):
        ctx.save_for_backward(v)
        return v.clamp(-1, 1)

    @staticmethod
    def backward(ctx, g):
        (v,) = ctx.saved_tensors
        inward = ((v < 1) | (g > 0)) & ((v > -1) | (g < 0))  # descent moves v by -g
        return g * inward


class UNetGenerator(_Generator):
    """The seed design: double 3x3 conv blocks, widths ngf * 2**i, max-pool down, transposed conv up.

    With ngf=16 and depth=5 (the default) the widths are 16-32-64-128-256 and the bottleneck
    (512 wide) is 1x1 for a 32 px input; 7.78 M parameters at 3 -> 3 channels.
    """

    def __init__(self, in_channels=3, out_channels=3, ngf=16, depth=5, norm="batch", dropout=0.0, residual=False):
        super().__init__()
        self.in_channels, self.out_channels, self.depth, self.residual = in_channels, out_channels, depth, residual
        widths = [ngf * 2 ** i for i in range(depth)]
        self.down = nn.ModuleList()
        cin = in_channels
        for w in widths:  # each level: (B, w, H/2^i, W/2^i), then max-pool halves it
            self.down.append(ConvBlock(cin, w, norm))
            cin = w
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = ConvBlock(cin, cin * 2, norm)  # (B, 2*w_last, H/2^depth, W/2^depth)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.up = nn.ModuleList()
        self.up_blocks = nn.ModuleList()
        cin = cin * 2
        for w in reversed(widths):  # transposed conv doubles the size, then concat with the skip
            self.up.append(nn.ConvTranspose2d(cin, w, 2, stride=2))
            self.up_blocks.append(ConvBlock(2 * w, w, norm))
            cin = w
        self.head = nn.Conv2d(cin, out_channels, 1)  # (B, out, H, W)

    def forward(self, x):
        self.check_size(x.shape[-2], x.shape[-1])
        h, skips = x, []
        for block in self.down:
            h = block(h)
            skips.append(h)
            h = self.pool(h)
        h = self.drop(self.bottleneck(h))
        for up, block, skip in zip(self.up, self.up_blocks, reversed(skips)):
            h = block(torch.cat([up(h), skip], dim=1))
        return self.finish(x, self.head(h))


class SkipBlock(nn.Module):
    """One level of the paper's U-Net: down(x) -> submodule -> up, concatenated with x.

    Layer order and attribute names follow the official implementation
    (`UnetSkipConnectionBlock`), so its state_dict keys (`model.model.1.model.3...`) load as is.
    """

    def __init__(self, outer, inner, cin=None, sub=None, outermost=False, innermost=False, norm="batch", dropout=0.0):
        super().__init__()
        self.outermost = outermost
        cin = outer if cin is None else cin
        use_bias = norm == "instance"
        down_conv = nn.Conv2d(cin, inner, 4, stride=2, padding=1, bias=use_bias)
        if outermost:
            up = [nn.ReLU(True), nn.ConvTranspose2d(inner * 2, outer, 4, stride=2, padding=1)]
            layers = [down_conv, sub, *up]  # tanh / residual is applied by the generator
        elif innermost:
            up = [nn.ReLU(True), nn.ConvTranspose2d(inner, outer, 4, stride=2, padding=1, bias=use_bias), norm_layer(norm, outer)]
            layers = [nn.LeakyReLU(0.2, True), down_conv, *up]
        else:
            up = [nn.ReLU(True), nn.ConvTranspose2d(inner * 2, outer, 4, stride=2, padding=1, bias=use_bias), norm_layer(norm, outer)]
            layers = [nn.LeakyReLU(0.2, True), down_conv, norm_layer(norm, inner), sub, *up]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        if self.outermost:
            return self.model(x)
        return torch.cat([x, self.model(x)], 1)


class Pix2PixUNet(_Generator):
    """The paper's U-Net: 4x4 stride-2 convs, LeakyReLU down, ReLU up, dropout in the 512-wide middle.

    depth = number of down-samplings (5 for 32 px, 7 = official unet_128, 8 = unet_256).
    Note, as in the official code, dropout only exists in middle blocks, i.e. when depth > 5.
    """

    def __init__(self, in_channels=3, out_channels=3, ngf=64, depth=5, norm="batch", dropout=0.5, residual=False):
        super().__init__()
        if depth < 5:
            raise UserError(f"the pix2pix generator needs depth >= 5, got {depth}")
        self.in_channels, self.out_channels, self.depth, self.residual = in_channels, out_channels, depth, residual
        block = SkipBlock(ngf * 8, ngf * 8, innermost=True, norm=norm)
        for _ in range(depth - 5):
            block = SkipBlock(ngf * 8, ngf * 8, sub=block, norm=norm, dropout=dropout)
        block = SkipBlock(ngf * 4, ngf * 8, sub=block, norm=norm)
        block = SkipBlock(ngf * 2, ngf * 4, sub=block, norm=norm)
        block = SkipBlock(ngf, ngf * 2, sub=block, norm=norm)
        self.model = SkipBlock(out_channels, ngf, cin=in_channels, sub=block, outermost=True, norm=norm)

    def forward(self, x):
        self.check_size(x.shape[-2], x.shape[-1])
        return self.finish(x, self.model(x))


class PatchGANDiscriminator(nn.Module):
    """Classifies overlapping patches of the (input, output) pair as real or fake; returns logits.

    n_layers=3 is the seed's (and the paper's 70x70) design; at 32 px its 2x2 output grid
    sees the whole image, so use n_layers=1 or 2 for a real patch discriminator there.
    """

    def __init__(self, in_channels=6, ndf=64, n_layers=3, norm="batch"):
        super().__init__()
        use_bias = norm == "instance"
        layers = [nn.Conv2d(in_channels, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):  # n < n_layers: stride 2; the last one: stride 1
            prev, mult = mult, min(2 ** n, 8)
            stride = 2 if n < n_layers else 1
            layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, stride=stride, padding=1, bias=use_bias),
                       norm_layer(norm, ndf * mult), nn.LeakyReLU(0.2, True)]
        layers.append(nn.Conv2d(ndf * mult, 1, 4, stride=1, padding=1))
        self.model = nn.Sequential(*layers)
        self.n_layers = n_layers

    def forward(self, source, target):
        return self.model(torch.cat([source, target], dim=1))

    def receptive_field(self) -> int:
        """Pixels of the input that one output logit sees."""
        rf = 1
        for m in reversed([m for m in self.model if isinstance(m, nn.Conv2d)]):
            rf = (rf - 1) * m.stride[0] + m.kernel_size[0]
        return rf

    @staticmethod
    def grid_size(size: int, n_layers: int) -> int:
        """Side of the logit grid for `size` px inputs, without building the network (< 1: too deep)."""
        for _ in range(n_layers):  # the stride-2 4x4 convs
            size = (size - 2) // 2 + 1
        return size - 2  # two stride-1 4x4 convs with padding 1

    def output_size(self, size: int) -> int:
        return self.grid_size(size, self.n_layers)


def init_weights(module: nn.Module, gain: float = 0.02) -> None:
    """N(0, 0.02) for convs, N(1, 0.02) for norm scales, zero biases (pix2pix paper, section 3.3)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, gain)
            nn.init.zeros_(m.bias)


def zero_last_layer(gen: nn.Module) -> None:
    """Make a residual generator start exactly at the identity: the layer producing G(x) outputs 0."""
    last = [m for m in gen.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))][-1]
    nn.init.zeros_(last.weight)
    if last.bias is not None:
        nn.init.zeros_(last.bias)


GENERATORS = {"seed": UNetGenerator, "pix2pix": Pix2PixUNet}
DEFAULT_NGF = {"seed": 16, "pix2pix": 64}
DEFAULT_DROPOUT = {"seed": 0.0, "pix2pix": 0.5}


def generator_config(arch="seed", in_channels=3, out_channels=3, ngf=0, depth=5, norm="batch", dropout=-1.0, residual=False) -> dict:
    """Resolve design defaults into the plain dict saved beside inference weights."""
    if arch not in GENERATORS:
        raise UserError(f"unknown generator {arch!r}; choose one of {', '.join(GENERATORS)}")
    return dict(arch=arch, in_channels=in_channels, out_channels=out_channels, ngf=ngf or DEFAULT_NGF[arch],
                depth=depth, norm=norm, dropout=DEFAULT_DROPOUT[arch] if dropout < 0 else dropout, residual=bool(residual))


def build_generator(config: dict) -> nn.Module:
    cfg = dict(config)
    arch = cfg.pop("arch")
    if arch not in GENERATORS:
        raise UserError(f"unknown generator {arch!r}; choose one of {', '.join(GENERATORS)}")
    return GENERATORS[arch](**cfg)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def valid_size(size: int, depth: int) -> bool:
    return size % (2 ** depth) == 0



"""tinypix2pix: pix2pix (Isola et al. 2017) for small images, compact and fast."""
__version__ = "0.1.0"

from .models import Pix2PixUNet, PatchGANDiscriminator, UNetGenerator  # noqa: E402,F401

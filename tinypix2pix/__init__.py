"""tinypix2pix: pix2pix (Isola et al. 2017) for small images, compact and fast.

The public names are imported lazily, so `train.py --help` and flag errors answer without
waiting for torch to import.
"""
__version__ = "0.1.0"

_EXPORTS = {
    "UNetGenerator": "models", "Pix2PixUNet": "models", "PatchGANDiscriminator": "models",
    "load_generator": "infer", "translate": "infer",
}


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = list(_EXPORTS)

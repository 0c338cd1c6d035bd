"""emunet: U-Net segmentation of electron-microscopy images, from the MindSpore lab to beyond.

The Python interface in one line: ``Segmenter(checkpoint)(image)`` gives what ``unet predict``
writes (see :class:`emunet.infer.predictor.Segmenter`).
"""

__version__ = "0.1.0"
__all__ = ["Segmenter", "__version__"]


def __getattr__(name: str):
    # Imported on first use, so `unet --help` does not wait for torch.
    if name == "Segmenter":
        from .infer.predictor import Segmenter

        return Segmenter
    raise AttributeError(f"module 'emunet' has no attribute {name!r}")

"""emunet: U-Net segmentation of electron-microscopy images, from the MindSpore lab to beyond."""

__version__ = "0.1.0"

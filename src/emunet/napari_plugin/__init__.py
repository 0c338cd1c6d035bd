"""The napari plugin (``pip install "emunet[napari]"``): a dock widget that segments an image
layer with a bundled model or a checkpoint and fine-tunes a model on painted layers, and
ISBI-like sample slices. The work itself is in :mod:`.tasks` (no Qt), the Qt side in
:mod:`.widget`; the manifest is ``emunet/napari.yaml``."""

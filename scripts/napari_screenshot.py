"""The README's napari picture, taken from a real napari window: the plugin's widget beside ISBI
test slices segmented by a bundled model (cells over the EM image).

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python scripts/napari_screenshot.py docs/napari.png
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tifffile

ISBI = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "isbi2012" / "test-volume.tif"


def segment_and_capture(viewer, source: Path, out: Path, wait: Callable[[int], None], model: str | None = None,
                        timeout_s: float = 300) -> np.ndarray:
    """Open three slices of ``source``, segment them with the plugin's widget (``model``, or the
    bundled cells model), and save the window with the widget as ``out``; returns the picture."""
    from emunet.model.bundled import bundled_models

    models = bundled_models()
    model = model or ("isbi-cells" if "isbi-cells" in models else next(iter(models)))
    slices = tifffile.imread(source)[:3]
    viewer.window.resize(1500, 900)
    layer = viewer.add_image(slices, name="ISBI test slices", scale=(50, 4, 4))
    _, widget = viewer.window.add_plugin_dock_widget("emunet", "Segment and fine-tune")
    widget.model.value, widget.image.value, widget.outputs.value = model, layer, "cells"
    widget.segment_button.clicked()
    start = time.monotonic()
    while not widget.segment_button.enabled:
        if time.monotonic() - start > timeout_s:
            raise TimeoutError(f"segmenting took more than {timeout_s} s")
        wait(100)
    cells = viewer.layers[f"{layer.name} cells"]
    cells.opacity = 0.45
    cells.contour = 0
    viewer.reset_view()
    wait(500)
    return viewer.screenshot(str(out), canvas_only=False, flash=False)


def main() -> None:
    import napari
    from qtpy.QtWidgets import QApplication

    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("docs/napari.png")
    viewer = napari.Viewer()

    def wait(ms: int) -> None:
        end = time.monotonic() + ms / 1000
        while time.monotonic() < end:
            QApplication.processEvents()
            time.sleep(0.01)

    picture = segment_and_capture(viewer, ISBI, out, wait)
    print(f"{out}: {picture.shape[1]} x {picture.shape[0]} screenshot")
    viewer.close()


if __name__ == "__main__":
    main()

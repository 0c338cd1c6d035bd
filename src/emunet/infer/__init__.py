"""From images to maps and cells: tiling, the predictor, post-processing, segmentation, blockwise volumes."""

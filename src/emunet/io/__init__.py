"""Reading and writing: addresses, image and volume formats, object storage, run folders."""

"""An image task: grayscale shapes from a folder of labelled PNG files."""

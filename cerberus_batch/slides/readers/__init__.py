"""Slide readers beyond tiffslide and Pillow (those stay in `slides.sources`); `sources.open_source` picks one."""

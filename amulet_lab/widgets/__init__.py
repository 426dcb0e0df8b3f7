"""The notebook widgets: ``ClassifierApp`` (Classify and Gallery tabs, the gallery's review) and plain words.

All logic lives here so it is tested headless: a test sets ``app.front_upload.value`` to the ipywidgets 8 shape,
presses the buttons and reads ``app.state`` and the HTML the widgets hold. Notebooks only build and display.
"""

from amulet_lab.widgets._html import BAND_WORDS, band_words, english_name, sample_pair, upload_bytes
from amulet_lab.widgets.classify import ClassifierApp
from amulet_lab.widgets.gallery import Gallery, GalleryItem
from amulet_lab.widgets.review import ReviewPanel

__all__ = ["ClassifierApp", "Gallery", "GalleryItem", "ReviewPanel", "BAND_WORDS", "band_words", "upload_bytes",
           "sample_pair", "english_name"]

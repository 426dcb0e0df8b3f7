"""The notebook widgets: ``ClassifierApp`` (Classify, Gallery with its review, Phone photo and Train tabs) and
what they show in plain words.

All logic lives here so it is tested headless: a test sets ``app.front_upload.value`` to the ipywidgets 8 shape,
presses the buttons and reads ``app.state`` and the HTML the widgets hold. Notebooks only build and display.
"""

from amulet_lab.widgets._html import BAND_WORDS, band_words, english_name, sample_pair, upload_bytes
from amulet_lab.widgets.classify import ClassifierApp
from amulet_lab.widgets.gallery import Gallery, GalleryItem
from amulet_lab.widgets.review import ReviewPanel
from amulet_lab.widgets.scene import ScenePanel
from amulet_lab.widgets.train import TrainPanel

__all__ = ["ClassifierApp", "Gallery", "GalleryItem", "ReviewPanel", "ScenePanel", "TrainPanel", "BAND_WORDS",
           "band_words", "upload_bytes", "sample_pair", "english_name"]

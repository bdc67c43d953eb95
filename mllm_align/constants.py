"""Constants shared by data and models.

``IMAGE_TOKEN_INDEX`` is the placeholder id that the data pipeline puts into ``input_ids`` where an
image goes (one placeholder per image, LLaVA's convention); the model replaces each placeholder by
that image's projected feature rows. ``IGNORE_INDEX`` marks label positions that carry no loss.
"""
IGNORE_INDEX = -100
IMAGE_TOKEN_INDEX = -200
DEFAULT_IMAGE_TOKEN = '<image>'

"""Constants shared by data and models.

``IMAGE_TOKEN_INDEX`` is the placeholder id that the data pipeline puts into ``input_ids`` where an
image goes (one placeholder per image, LLaVA's convention); the model replaces each placeholder by
that image's projected feature rows. ``IGNORE_INDEX`` marks label positions that carry no loss.
``VPT_TOKEN`` is CoLVA's object-token placeholder: a real token added to the tokenizer, one per object, whose
input-embedding row the CoLVA model overwrites with that object's pooled expert embedding.
"""
IGNORE_INDEX = -100
IMAGE_TOKEN_INDEX = -200
DEFAULT_IMAGE_TOKEN = '<image>'
VPT_TOKEN = '<VPT_CONTEXT>'

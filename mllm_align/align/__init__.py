
from .cal import CAL, cal_loss, cal_token_weights, cal_token_weights_from_gold  # noqa: F401
from .moca import MoCa, attach_moca_to_hf, find_decoder_layers, load_moca, save_moca_for_hf  # noqa: F401
from .visual_words import VisualWords, pseudo_image_features, visual_word_loss, visual_word_slots  # noqa: F401

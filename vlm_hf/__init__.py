"""vlm-hf: classic vision-language models as Hugging Face transformers models.

Importing the package registers its classes with the transformers Auto classes.
"""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForPreTraining,
    AutoModelForVisualQuestionAnswering,
    AutoModelForZeroShotImageClassification,
)

from .configuration_vlm_hf import VlmHfConfig
from .modeling_vlm_hf import (
    VlmHfForImageTextRetrieval,
    VlmHfForPreTraining,
    VlmHfForQuestionAnswering,
    VlmHfModel,
    VlmHfPreTrainedModel,
)

__version__ = "0.1.0"

# Auto class -> model class. `save_pretrained` writes all of them into `auto_map`, so a saved folder loads with any of
# these Auto classes through `trust_remote_code` too.
AUTO_MODEL_CLASSES = {
    AutoModel: VlmHfModel,
    AutoModelForPreTraining: VlmHfForPreTraining,
    AutoModelForVisualQuestionAnswering: VlmHfForQuestionAnswering,
    AutoModelForZeroShotImageClassification: VlmHfForImageTextRetrieval,
}


def register() -> None:
    """Register the vlm_hf classes with transformers' Auto classes (safe to call more than once)."""
    AutoConfig.register(VlmHfConfig.model_type, VlmHfConfig, exist_ok=True)
    VlmHfConfig.register_for_auto_class()
    for auto_class, model_class in AUTO_MODEL_CLASSES.items():
        auto_class.register(VlmHfConfig, model_class, exist_ok=True)
        model_class.register_for_auto_class(auto_class.__name__)


register()

__all__ = [
    "VlmHfConfig",
    "VlmHfPreTrainedModel",
    "VlmHfModel",
    "VlmHfForPreTraining",
    "VlmHfForQuestionAnswering",
    "VlmHfForImageTextRetrieval",
    "register",
]

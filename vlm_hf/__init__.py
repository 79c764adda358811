"""vlm-hf: classic vision-language models as Hugging Face transformers models.

Importing the package registers its classes with the transformers Auto classes.
"""

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageTextToText,
    AutoModelForPreTraining,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoModelForVisualQuestionAnswering,
    AutoModelForZeroShotImageClassification,
    AutoProcessor,
)

from .configuration_vlm_hf import VlmHfConfig
from .image_processing_vlm_hf import VlmHfImageProcessor
from .modeling_vlm_hf import (
    VlmHfForConditionalGeneration,
    VlmHfForImageTextRetrieval,
    VlmHfForPreTraining,
    VlmHfForQuestionAnswering,
    VlmHfForRegionGrounding,
    VlmHfForVisualReasoning,
    VlmHfModel,
    VlmHfPreTrainedModel,
)
from .pipelines import VisualQuestionAnsweringPipeline, register_pipeline
from .processing_vlm_hf import VlmHfProcessor
from .tokenization import train_wordpiece_tokenizer

__version__ = "0.1.0"

# Auto class -> model class. `save_pretrained` writes all of them into `auto_map`, so a saved folder loads with any of
# these Auto classes through `trust_remote_code` too.
AUTO_MODEL_CLASSES = {
    AutoModel: VlmHfModel,
    AutoModelForPreTraining: VlmHfForPreTraining,
    AutoModelForVisualQuestionAnswering: VlmHfForQuestionAnswering,
    AutoModelForZeroShotImageClassification: VlmHfForImageTextRetrieval,
    AutoModelForSequenceClassification: VlmHfForVisualReasoning,
    AutoModelForTokenClassification: VlmHfForRegionGrounding,
    AutoModelForImageTextToText: VlmHfForConditionalGeneration,
}


def register() -> None:
    """Register the vlm_hf classes with transformers' Auto classes and pipelines (safe to call more than once)."""
    AutoConfig.register(VlmHfConfig.model_type, VlmHfConfig, exist_ok=True)
    VlmHfConfig.register_for_auto_class()
    for auto_class, model_class in AUTO_MODEL_CLASSES.items():
        auto_class.register(VlmHfConfig, model_class, exist_ok=True)
        model_class.register_for_auto_class(auto_class.__name__)
    AutoImageProcessor.register(
        VlmHfConfig, image_processor_classes={"torchvision": VlmHfImageProcessor}, exist_ok=True
    )
    VlmHfImageProcessor.register_for_auto_class("AutoImageProcessor")
    AutoProcessor.register(VlmHfConfig, VlmHfProcessor, exist_ok=True)
    VlmHfProcessor.register_for_auto_class("AutoProcessor")
    register_pipeline()


register()

__all__ = [
    "VlmHfConfig",
    "VlmHfPreTrainedModel",
    "VlmHfModel",
    "VlmHfForPreTraining",
    "VlmHfForQuestionAnswering",
    "VlmHfForVisualReasoning",
    "VlmHfForRegionGrounding",
    "VlmHfForImageTextRetrieval",
    "VlmHfForConditionalGeneration",
    "VlmHfImageProcessor",
    "VlmHfProcessor",
    "VisualQuestionAnsweringPipeline",
    "train_wordpiece_tokenizer",
    "register",
]

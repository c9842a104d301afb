"""Knowledge distillation: Hinton KD, feature and relation losses (registered in LOSSES), transformer losses
(TinyBERT hidden states, MiniLM attention and relations), several teachers."""
from torchslim.distillation.augment import augment_token_ids
from torchslim.distillation.config import KDConfig, LossSpec
from torchslim.distillation.datafree import (DAFLConfig, DataFreeConfig, DeepInversionConfig, FewDataVAEConfig,
                                             distill_data_free, few_data_indices)
from torchslim.distillation.kd import distill, kd_loss_fn, teacher_agreement, teacher_logits
from torchslim.distillation.losses import LOSSES, DistillLoss, LossInputs, embedding_loss, kd_loss
from torchslim.distillation.objective import DistillationModel, build_objective, combine_logits
from torchslim.distillation.taps import FeatureTaps, make_adapter, match_spatial
from torchslim.distillation.token_kd import forward_kl, jsd, reverse_kl, teacher_generated  # + 3 LOSSES
from torchslim.distillation.transformer_kd import (TransformerTaps, attention_log_probs, hidden_state_loss,
                                                   qkv_relations, relation_kl_loss, uniform_layer_map)

__all__ = ["KDConfig", "LossSpec", "LOSSES", "DistillLoss", "LossInputs", "DistillationModel", "FeatureTaps",
           "augment_token_ids", "build_objective", "combine_logits", "distill", "embedding_loss", "kd_loss", "kd_loss_fn",
           "make_adapter",
           "match_spatial", "teacher_agreement", "teacher_logits",
           "DataFreeConfig", "DAFLConfig", "DeepInversionConfig", "FewDataVAEConfig", "distill_data_free",
           "few_data_indices", "TransformerTaps", "attention_log_probs", "hidden_state_loss", "qkv_relations",
           "relation_kl_loss", "uniform_layer_map", "forward_kl", "reverse_kl", "jsd", "teacher_generated"]

"""YaRN frequencies against transformers, with and without `truncate` (gpt-oss uses truncate: false)."""

import pytest
import torch
import transformers as tf
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from acik.formats.hf import config_from_hf
from acik.model.rope import rope_frequencies


@pytest.mark.parametrize("truncate", [True, False])
@pytest.mark.parametrize("factor,original", [(32.0, 4096), (4.0, 64)])
def test_yarn_matches_transformers(truncate, factor, original):
    rope = {"rope_type": "yarn", "rope_theta": 150000.0, "factor": factor, "beta_fast": 32.0, "beta_slow": 1.0,
            "truncate": truncate, "original_max_position_embeddings": original}
    hf = tf.GptOssConfig(hidden_size=64, head_dim=16, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=int(original * factor), rope_parameters=rope)
    inv_ref, scale_ref = ROPE_INIT_FUNCTIONS["yarn"](hf)
    inv, scale = rope_frequencies(config_from_hf(hf.to_dict()))
    assert scale == pytest.approx(scale_ref, rel=1e-7)
    assert torch.allclose(inv, inv_ref.float(), rtol=1e-6, atol=0)

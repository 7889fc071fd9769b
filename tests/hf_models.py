"""Tiny transformers models whose in-memory names differ from the names their checkpoint files
use (transformers 5 renames, and for MoE stacks, tensors between the two). Model factories for
`--target`, e.g. `hf_models:vit()`."""


def vit():
    """ViT: `vit.layers.N.attention.q_proj` in memory, `vit.encoder.layer.N.attention.attention.query`
    in a file; q, k, v and the output projection all have one shape."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    return ViTForImageClassification(ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                               intermediate_size=64, image_size=32, patch_size=8,
                                               num_labels=3)).eval()


def mixtral():
    """Mixtral: experts stacked into `experts.gate_up_proj` in memory, one `w1`/`w2`/`w3` per
    expert in a file."""
    import torch
    from transformers import MixtralConfig, MixtralForCausalLM

    torch.manual_seed(0)
    return MixtralForCausalLM(MixtralConfig(vocab_size=64, hidden_size=16, intermediate_size=24, num_hidden_layers=1,
                                            num_attention_heads=4, num_key_value_heads=2, num_local_experts=3,
                                            num_experts_per_tok=2)).eval()


def llama_tied():
    """Llama with tied embeddings: save_pretrained leaves `lm_head.weight` out."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=24, num_hidden_layers=1,
                                        num_attention_heads=4, num_key_value_heads=2,
                                        tie_word_embeddings=True)).eval()

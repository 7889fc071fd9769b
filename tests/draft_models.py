"""A transformer encoder two ways: torch's own (attention with one fused in_proj for q, k and
v) and BERT's from transformers (separate query, key and value), same sizes, so a draft can be
checked by comparing their outputs."""

HIDDEN, HEADS, FFN, LAYERS = 32, 4, 64, 2


def torch_encoder():
    import torch
    from torch import nn

    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(HIDDEN, HEADS, FFN, dropout=0.0, activation="gelu", batch_first=True)
    return nn.TransformerEncoder(layer, LAYERS, enable_nested_tensor=False).eval()


def bert_encoder():
    import torch
    from transformers import BertConfig
    from transformers.models.bert.modeling_bert import BertEncoder

    torch.manual_seed(1)
    config = BertConfig(hidden_size=HIDDEN, num_attention_heads=HEADS, intermediate_size=FFN,
                        num_hidden_layers=LAYERS, hidden_act="gelu", layer_norm_eps=1e-5,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return BertEncoder(config).eval()

"""Set transformer for perturbation prediction: control cell set + perturbation -> perturbed cell set.

In the spirit of STATE's state-transition model (reimplemented from its description, no code taken):
each control cell is a token, there is no positional encoding and attention is bidirectional, so the
model is a function of the set. A learned perturbation embedding and a context (cell line) embedding
are added to every token. The decoder predicts a per-cell change in gene space and the output is
`ctrl + delta` (residual over the control cells); its last layer starts at zero, so at initialisation
the prediction is the control set itself.

Shape letters: b batch, s cells in a set, g genes, d model width.
"""

import torch
import torch.nn.functional as F
from timm.layers import Mlp
from timm.models.vision_transformer import Block
from torch import nn

from models.registry import register_model


class SetTransformer(nn.Module):
    """MLP encoder (genes -> d) + condition embeddings, pre-norm transformer blocks, MLP decoder (d -> genes)."""

    def __init__(
        self,
        n_genes: int,
        n_perts: int,
        n_contexts: int,
        d_model: int = 128,
        depth: int = 2,
        n_heads: int = 4,
        mlp_ratio: float = 4,
        dropout: float = 0.0,
        relu_output: bool = False,
    ):
        super().__init__()
        assert d_model % n_heads == 0, f"d_model={d_model} must be divisible by n_heads={n_heads}"
        self.n_genes, self.n_perts, self.n_contexts = n_genes, n_perts, n_contexts
        self.num_features = d_model
        # With non-negative data (log1p expression) a ReLU keeps predictions in range, as STATE does in gene space.
        self.relu_output = relu_output
        self.encoder = Mlp(n_genes, hidden_features=d_model, out_features=d_model, drop=dropout)
        self.pert_embed = nn.Embedding(n_perts, d_model)
        self.context_embed = nn.Embedding(n_contexts, d_model)
        self.blocks = nn.Sequential(*[Block(d_model, n_heads, mlp_ratio=mlp_ratio, qkv_bias=True, proj_drop=dropout, attn_drop=dropout) for _ in range(depth)])
        self.norm = nn.LayerNorm(d_model)
        self.decoder = Mlp(d_model, hidden_features=d_model, out_features=n_genes, drop=dropout)
        self.apply(self._init_weights)
        # Unit-scale condition embeddings (nn.Embedding's own init): at ViT's 0.02 the encoder features of noisy cells (norm ~10-50 on log1p
        # data) drowned them, and the model never learnt a perturbation-specific effect on the simulated screen.
        nn.init.normal_(self.pert_embed.weight, std=1.0)
        nn.init.normal_(self.context_embed.weight, std=1.0)
        # Zero last layer: pred == ctrl at init, so training starts from the "no effect" baseline.
        nn.init.zeros_(self.decoder.fc2.weight)
        nn.init.zeros_(self.decoder.fc2.bias)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward_features(self, ctrl_bsg: torch.Tensor, pert_b: torch.Tensor, context_b: torch.Tensor) -> torch.Tensor:
        cond_bd = self.pert_embed(pert_b) + self.context_embed(context_b)
        h_bsd = self.encoder(ctrl_bsg) + cond_bd[:, None, :]
        return self.norm(self.blocks(h_bsd))

    def forward(self, ctrl_bsg: torch.Tensor, pert_b: torch.Tensor, context_b: torch.Tensor) -> torch.Tensor:
        pred_bsg = ctrl_bsg + self.decoder(self.forward_features(ctrl_bsg, pert_b, context_b))
        return F.relu(pred_bsg) if self.relu_output else pred_bsg

    def no_weight_decay(self) -> set[str]:
        return {"pert_embed.weight", "context_embed.weight"}

    def group_matcher(self, coarse: bool = False) -> dict:
        # As timm's ViT: the final norm joins the last block, the decoder (the head) matches nothing and gets the last id (LR scale 1). Non-capturing
        # groups: timm turns every captured group into a number.
        return {"stem": r"^(?:encoder|pert_embed|context_embed)\.", "blocks": [(r"^blocks\.(\d+)", None), (r"^norm\.", (99999,))]}


@register_model
def set_transformer(**kwargs) -> SetTransformer:
    """d_model 128, depth 2, 4 heads: trains on CPU in minutes on a few thousand HVGs."""
    return SetTransformer(**kwargs)


@register_model
def set_transformer_tiny(**kwargs) -> SetTransformer:
    """d_model 32, depth 1, 2 heads: compiles in seconds on PJRT CPU, for tests."""
    return SetTransformer(**{"d_model": 32, "depth": 1, "n_heads": 2, **kwargs})

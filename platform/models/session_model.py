"""Next-item prediction over a session, read top to bottom:

    batch {column: [B, L] or [B]} -> FeatureEmbedding -> (mask) -> body -> heads -> loss

Sequences are right-padded (0 = padding) to max_len. Training objectives (masking.py):
clm, mlm, plm, rtd. Inference (`next_item_hidden`) encodes sessions that end right
before the item to predict: clm reads the last position, the others put the mask
embedding in the free slot after the last item and read that. Callers pass only the
events before the target (batch.eval_examples cuts them), so nothing of the target
reaches the model.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rayrec.models.batch import fit_to_length
from rayrec.models.bodies import build_body
from rayrec.models.config import ModelConfig
from rayrec.models.features import FeatureEmbedding, FeatureSpec
from rayrec.models.heads import NextItemHead, SequenceHead
from rayrec.models.masking import Masked, eval_slot, mask_clm, mask_mlm, mask_plm, ProposalSampler, replace_tokens

PAD = 0


class SessionModel(nn.Module):
    def __init__(self, cfg: ModelConfig, features: list[FeatureSpec]):
        super().__init__()
        self.cfg, self.features = cfg, features
        self.item_col = features[0].name
        self.list_cols = [f.name for f in features if f.is_list]
        self.inputs = FeatureEmbedding(features, cfg)
        self.body = build_body(cfg)
        self.two_stream = cfg.masking == "plm" and getattr(self.body, "is_xlnet", False)
        # XLNet's query stream hides a predicted position's content itself: no mask vector
        needs_mask = cfg.masking != "clm" and not self.two_stream
        self.mask_embedding = nn.Parameter(torch.randn(cfg.d_model) * 0.02) if needs_mask else None
        self.next_item = NextItemHead(cfg, self.inputs.item_table, features[0].first_code)
        self.seq_heads = nn.ModuleList(SequenceHead(h, cfg.d_model) for h in cfg.heads)
        self.discriminator = nn.Linear(cfg.d_model, 1) if cfg.masking == "rtd" else None
        self.sampler = ProposalSampler() if cfg.masking == "rtd" else None
        self.loss_parts: dict[str, float] = {}

    @property
    def n_items(self) -> int:
        return self.next_item.n_items

    @property
    def first_item(self) -> int:
        return self.next_item.first

    # --- shared pieces -----------------------------------------------------------------
    def encode(self, batch: dict[str, torch.Tensor], masked: Masked | None = None) -> torch.Tensor:
        """Hidden states [B, L, d]; hidden positions see the mask embedding instead of
        their features and are attended like real positions."""
        items = batch[self.item_col]
        x = self.inputs(batch, items.shape[1])
        attend = items != PAD
        if masked is not None and masked.hide is not None:
            fill = self.mask_embedding.to(x.dtype) if self.mask_embedding is not None else x.new_zeros(())
            x = torch.where(masked.hide[..., None], fill, x)
            attend = attend | masked.hide
        perm = masked.perm_mask if masked is not None else None
        return self.body(x, attend, perm)

    def as_batch(self, batch) -> dict[str, torch.Tensor]:
        return batch if isinstance(batch, dict) else {self.item_col: batch}

    # --- training ----------------------------------------------------------------------
    def objective(self, batch: dict[str, torch.Tensor]) -> tuple[Masked, torch.Tensor]:
        """The training scheme's mask for this batch and the hidden states under it."""
        items, cfg = batch[self.item_col], self.cfg
        if cfg.masking == "clm":
            masked = mask_clm(items)
        elif cfg.masking == "plm":
            masked = mask_plm(items, cfg.plm_probability, cfg.plm_max_span, self.two_stream)
        else:
            masked = mask_mlm(items, cfg.mlm_probability)
        return masked, self.encode(batch, masked)

    def forward(self, batch) -> torch.Tensor:
        """Training loss of a batch (forward, so that DDP syncs the gradients)."""
        batch = self.as_batch(batch)
        items, cfg = batch[self.item_col], self.cfg
        masked, hidden = self.objective(batch)
        keep = masked.targets >= self.first_item
        item_loss = self.next_item.loss(hidden[keep], masked.targets[keep])
        total = cfg.next_item_weight * item_loss
        parts = {"next_item": float(item_loss.detach())}
        if cfg.masking == "rtd":
            rtd = self.discriminator_loss(batch, masked, hidden)
            total = total + cfg.rtd_weight * rtd
            parts["rtd"] = float(rtd.detach())
        attend = items != PAD
        for head in self.seq_heads:
            h_loss = head.loss(head(hidden, attend), batch[head.head.target])
            total = total + head.head.weight * h_loss
            parts[head.head.target] = float(h_loss.detach())
        self.loss_parts = parts
        return total

    def discriminator_loss(self, batch: dict, masked: Masked, hidden: torch.Tensor) -> torch.Tensor:
        """ELECTRA: the generator (this model's own masked-item predictions) proposes items
        for the masked positions; a second pass over the corrupted session learns to tell
        replaced positions from original ones."""
        items = batch[self.item_col]
        hide = masked.hide
        with torch.no_grad():
            if self.cfg.rtd_sample_from_batch or self.cfg.loss == "sampled":
                pool = items[items >= self.first_item]
                proposals = pool[torch.randint(0, len(pool), items.shape, device=items.device)]
            else:
                proposals = torch.zeros_like(items)
                proposals[hide] = self.sampler(self.next_item.full_scores(hidden[hide].detach()))
        corrupted, replaced = replace_tokens(items, hide, proposals)
        out = self.encode({**batch, self.item_col: corrupted})
        logits = self.discriminator(out).squeeze(-1)
        real = items != PAD
        return F.binary_cross_entropy_with_logits(logits[real], replaced[real].float())

    # --- inference ---------------------------------------------------------------------
    def prepare(self, batch) -> dict[str, torch.Tensor]:
        """Any right-padded width -> max_len positions with room for the mask slot."""
        return fit_to_length(self.as_batch(batch), self.item_col, self.list_cols, self.cfg.max_len,
                             need_slot=self.cfg.masking != "clm")

    def next_item_hidden(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """[B, d] state from which the next item is scored (batch already `prepare`d)."""
        items = batch[self.item_col]
        lengths = (items != PAD).sum(1)
        if self.cfg.masking == "clm":
            hidden, pos = self.encode(batch), (lengths - 1).clamp(min=0)
        else:
            hidden, pos = self.encode(batch, eval_slot(items, self.two_stream)), lengths
        return hidden.gather(1, pos[:, None, None].expand(-1, 1, hidden.shape[-1])).squeeze(1)

    @torch.no_grad()
    def next_item_scores(self, batch) -> torch.Tensor:
        """Scores [B, n_items] for the item after each session (-inf below first_item)."""
        return self.next_item.full_scores(self.next_item_hidden(self.prepare(batch)))

    @torch.no_grad()
    def recommend(self, batch, k: int, exclude_seen: bool = False, chunk: int = 65536) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k (item codes, scores) per session, scored in catalogue chunks; with
        `exclude_seen`, items already in the session are never recommended."""
        batch = self.prepare(batch)
        exclude = batch[self.item_col] if exclude_seen else None
        scores, codes = self.next_item.topk(self.next_item_hidden(batch), k, exclude, chunk)
        return codes, scores

    @torch.no_grad()
    def sequence_predictions(self, batch) -> dict[str, torch.Tensor]:
        """Each sequence head's output (probability for binary heads) on whole sessions."""
        batch = self.prepare(batch)
        items = batch[self.item_col]
        hidden = self.encode(batch)
        out = {}
        for head in self.seq_heads:
            p = head(hidden, items != PAD)
            out[head.head.target] = torch.sigmoid(p) if head.head.task == "binary" else p
        return out

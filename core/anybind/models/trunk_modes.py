"""How much of a pretrained trunk trains (:class:`anybind.trunks.TrunkMode`), applied to a module."""

from __future__ import annotations

from typing import Sequence

from torch import nn

from anybind.errors import AnybindError
from anybind.trunks import TrunkMode


def apply_trunk_mode(trunk: nn.Module, mode: TrunkMode, blocks: Sequence[nn.Module], lora_targets: Sequence[str],
                     where: str) -> None:
    """``frozen``: nothing trains; ``last:N``: the last N of ``blocks``; ``lora:R``: LoRA adapters
    (peft) on the linear layers named ``lora_targets``, nothing else; ``full``: everything."""
    if mode.kind == "full":
        return
    trunk.requires_grad_(False)
    if mode.kind == "last":
        if mode.layers > len(blocks):
            raise AnybindError(f"{where}: last:{mode.layers} asks for more blocks than the trunk has ({len(blocks)})")
        for block in list(blocks)[-mode.layers:]:
            block.requires_grad_(True)
    elif mode.kind == "lora":
        from peft import LoraConfig, inject_adapter_in_model

        from anybind.models.backbone import quiet_peft

        if not lora_targets:
            raise AnybindError(f"{where}: found no attention layers to put LoRA adapters on")
        with quiet_peft():
            inject_adapter_in_model(LoraConfig(r=mode.rank, lora_alpha=2 * mode.rank, target_modules=list(lora_targets)),
                                    trunk)
        for name, param in trunk.named_parameters():
            param.requires_grad_("lora_" in name)


ATTENTION_NAMES = ("q_proj", "k_proj", "v_proj", "query", "key", "value", "qkv")


def block_list(model: nn.Module) -> list[nn.Module]:
    """The trunk's repeated blocks, in order: its longest list of blocks with attention in them
    (``encoder.layer`` of a ViT, ``encoder.layers`` of CLIP or wav2vec2, ``blocks`` of a timm
    ViT), else its longest list of modules (``stages`` of a ConvNeXt)."""
    lists = [m for m in model.modules() if isinstance(m, (nn.ModuleList, nn.Sequential)) and len(m) > 1]

    def attends(block: nn.Module) -> bool:
        return any(n.rsplit(".", 1)[-1] in ATTENTION_NAMES for n, _ in block.named_modules())

    with_attention = [m for m in lists if all(attends(b) for b in m)]
    return list(max(with_attention or lists, key=len)) if lists else []


def attention_targets(model: nn.Module) -> list[str]:
    """Names of the linear layers LoRA adapts: the attention projections a trunk has."""
    names = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    return sorted(names & set(ATTENTION_NAMES))


class ReferencedTrunk:
    """For a modality encoder whose trunk may start from a checkpoint: its config has ``trunk``
    (a reference, empty for a trunk trained from scratch) and ``train_trunk`` (a mode), and the
    trunk module is ``self.trunk``. What the checkpoint holds is never saved again: a tower
    saves only the trunk's parameters that trained, and loading rebuilds the rest from it."""

    @property
    def referenced(self) -> bool:
        return bool(self.config.trunk)

    @property
    def trunk_mode(self) -> TrunkMode:
        return TrunkMode.parse(self.config.train_trunk) if self.referenced else TrunkMode("full")

    @property
    def frozen(self) -> bool:
        """Nothing in the encoder trains: a frozen trunk and no layers of its own after it (a video
        encoder's temporal layers over a frozen image trunk do train)."""
        return self.trunk_mode.kind == "frozen" and not any(
            p.requires_grad for n, p in self.named_parameters() if not n.startswith("trunk."))

    def setup_trunk(self, module: nn.Module, blocks, lora_targets) -> None:
        apply_trunk_mode(module, self.trunk_mode, blocks, lora_targets, where=self.config.trunk)

    def saved_state(self) -> dict:
        state = self.state_dict()
        if not self.referenced or self.trunk_mode.kind == "full":
            return state
        trained = {name for name, param in self.named_parameters() if param.requires_grad}
        return {k: v for k, v in state.items() if k in trained or not k.startswith("trunk.")}

    def restores(self, key: str) -> bool:
        return self.referenced and key.startswith("trunk.")

    def train(self, mode: bool = True):
        super().train(mode)
        if self.trunk_mode.kind == "frozen":
            self.trunk.eval()  # no dropout or batch-norm updates in a trunk that does not train
        return self


def export_trunk(encoder, out) -> None:
    """Write a tower's trained trunk as a transformers checkpoint (``save_pretrained`` and the
    reference's own preprocessor files), which ``--trunk MODALITY=hf:OUT`` loads again."""
    import shutil
    from pathlib import Path

    from anybind.trunks import TrunkReference

    trunk = getattr(encoder.config, "trunk", "")
    if not trunk or TrunkReference.parse(trunk).scheme != "hf":
        raise AnybindError("only a trunk that started from hf:PATH exports as a transformers checkpoint "
                           f"(this one: {trunk or 'trained from scratch'})")
    if encoder.trunk_mode.kind == "lora":
        raise AnybindError(f"{trunk}: a LoRA-adapted trunk does not export yet; train it with last:N or full")
    model = encoder.trunk.model
    if not hasattr(model, "save_pretrained"):
        raise AnybindError(f"{trunk}: its {type(model).__name__} is part of a larger checkpoint and has no "
                           "save_pretrained of its own")
    out = Path(out)
    model.save_pretrained(out)
    source = Path(TrunkReference.parse(trunk).name)
    for name in ("preprocessor_config.json", "tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
                 "special_tokens_map.json"):
        if (source / name).is_file():
            shutil.copy(source / name, out / name)

"""Training small causal language models into HuggingFace folders (train_lm.py's library).

``tiny_config`` makes a GPT-2 or Llama config for byte tokens (vocabulary 256, no dropout);
``train`` runs AdamW on random windows of the train split (a seeded sampler: the same
seed gives the same model) and saves the model with ``save_pretrained`` every
``save_every`` steps into ``<save_dir>/step_<k>`` and at the end into ``<save_dir>/final``,
each folder written beside its place and renamed into it, so a folder is whole or absent.
"""
from __future__ import annotations

import os
import shutil
import time
from typing import Any, Callable

import torch

from errors import UserError

ARCHS = ("gpt2", "llama")


def tiny_config(arch: str, n_layer: int, n_embd: int, n_head: int, context: int, vocab: int = 256) -> Any:
    """A causal-LM config of ``arch`` (gpt2: tied embeddings, Conv1D, LayerNorm; llama:
    rotary positions, RMSNorm, an untied head) without dropout."""
    if n_layer < 1 or n_embd < 1 or n_head < 1 or n_embd % n_head:
        raise UserError(f"--n_layer, --n_embd and --n_head must be >= 1 with --n_embd a multiple of --n_head "
                        f"(got {n_layer}, {n_embd}, {n_head})")
    if context < 2:
        raise UserError(f"--seq_len must be >= 2 (got {context})")
    import transformers
    transformers.logging.set_verbosity_error()
    if arch == "gpt2":
        return transformers.GPT2Config(n_layer=n_layer, n_embd=n_embd, n_head=n_head, vocab_size=vocab,
                                       n_positions=context, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                       bos_token_id=0, eos_token_id=0, use_cache=False)
    if arch == "llama":
        return transformers.LlamaConfig(hidden_size=n_embd, intermediate_size=4 * n_embd, num_hidden_layers=n_layer,
                                        num_attention_heads=n_head, num_key_value_heads=n_head, vocab_size=vocab,
                                        max_position_embeddings=context, tie_word_embeddings=False,
                                        bos_token_id=0, eos_token_id=0, pad_token_id=0, use_cache=False)
    raise UserError(f"unknown --arch '{arch}'; use {' or '.join(ARCHS)}")


def new_model(config: Any, seed: int) -> torch.nn.Module:
    import transformers
    torch.manual_seed(seed)
    return transformers.AutoModelForCausalLM.from_config(config)


def check_save_dir(save_dir: str, overwrite: bool) -> None:
    """Refuse to mix a new run into an old one: ``save_dir`` must be new or empty (or ``overwrite``)."""
    if os.path.isfile(save_dir):
        raise UserError(f"--save_dir {save_dir} is a file; give a folder")
    if os.path.isdir(save_dir) and os.listdir(save_dir) and not overwrite:
        raise UserError(f"--save_dir {save_dir} already holds a run; choose another folder or pass --overwrite")


def save(net: torch.nn.Module, folder: str) -> None:
    """``save_pretrained`` into ``folder``, whole or not at all (written beside, then renamed)."""
    from lm import quiet_transformers
    quiet_transformers()
    tmp = folder + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    net.save_pretrained(tmp)
    if os.path.isdir(folder):
        shutil.rmtree(folder)
    os.replace(tmp, folder)


@torch.no_grad()
def mean_loss(net: torch.nn.Module, windows: torch.Tensor, batch_size: int = 64) -> float:
    """Token-weighted mean next-token cross-entropy over ``windows`` (all of one length)."""
    was = net.training
    net.eval()
    total = 0.0
    for i in range(0, len(windows), batch_size):
        w = windows[i:i + batch_size]
        total += net(w, labels=w).loss.item() * len(w)
    net.train(was)
    return total / max(1, len(windows))


def train(net: torch.nn.Module, train_windows: torch.Tensor, steps: int, lr: float, batch_size: int,
          seed: int, save_dir: str, save_every: int = 0, log: Callable[[str], None] = print) -> torch.nn.Module:
    """AdamW (weight decay 0.01, linear warm-up over the first 5 % of the steps) on
    ``batch_size`` windows drawn at random (seeded) per step; saves step_0, every
    ``save_every`` steps, and ``final``."""
    if steps < 0 or batch_size < 1 or not lr > 0:
        raise UserError(f"--steps >= 0, --batch_size >= 1 and --lr > 0 needed (got {steps}, {batch_size}, {lr})")
    os.makedirs(save_dir, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.01)
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm))
    net.train()
    if save_every:
        save(net, os.path.join(save_dir, "step_0"))
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        w = train_windows[torch.randint(len(train_windows), (batch_size,), generator=gen)]
        loss = net(w, labels=w).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % max(1, steps // 10) == 0 or step == steps:
            log(f"step {step}/{steps}: loss {loss.item():.4f} ({time.perf_counter() - t0:.0f} s)")
        if save_every and step % save_every == 0:
            save(net, os.path.join(save_dir, f"step_{step}"))
    net.eval()
    save(net, os.path.join(save_dir, "final"))
    return net

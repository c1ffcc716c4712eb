"""The planted task: a teacher with known low-rank updates, and rows labelled by it.

The teacher is the base model with ΔW = U·diag(σ)·Vᵀ added to the weights of a few adapted modules
(``--planted-modules``, or draw K of a suite), drawn from ``--planted-seed`` alone. V lies in the principal subspace
of the module's inputs on the calibration rows (construction v2, planted_spec.construction_rule): an update along
directions the inputs never take changes no output, so no student could learn it and no metric should count it.
The student is the same base model (same head) with AdaLoRA on top, trained by the normal ``train`` path to match
the teacher's outputs: by default the teacher's logits (MSE on them, distillation: every row says how far the
student is from the teacher, not only whether its arg-max is right), or the teacher's classes (``--planted-targets
labels``). So the answer to "where should rank go?" is known: to the planted modules, at their planted ranks; the
main metric is the student's agreement with the teacher.

The rows need no selection, so every valid spec builds: the first candidate inputs are labelled by the teacher. What
makes allocation matter is the strength of the updates: ``--planted-strength auto`` takes the smallest strength of a
fixed ladder at which the base model agrees with the teacher on at most BASE_AGREEMENT of the calibration inputs
(the largest rung when none does), so that a student without the planted updates is far from the teacher whatever the
spec. The value used and the agreement reached are recorded. The head's class biases are centred so that the teacher
predicts every class about equally often, its weights scaled so that the logits spread by about 1 over the inputs;
the head stays frozen by default (``--planted-train-head``): the student then differs from the teacher only where the
adapters are.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import random
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from datasets import Dataset, DatasetDict
from transformers.pytorch_utils import Conv1D

from ..errors import UsageError
from ..module_names import short_module_name
from ..files import default_cache_dir
from .loading import SYNTHETIC_WORDS, data_fingerprint, find_local, read_local, tokenize, tokenizer_fingerprint
from .planted_spec import (
    BASE_AGREEMENT, PRINCIPAL_SHARE, STRENGTH_LADDER, check_planted_spec, construction_rule, default_planted_spec,
    draw_planted_spec, parse_planted_spec,
)
from .tasks import TASKS, Task

CALIBRATION_ROWS = 512  # the first candidates: the head's bias is centred and the strength chosen on them
CHUNK = 256  # candidates labelled per forward pass
GLUE_SOURCES = ("mnli", "rte")  # --data-dir: sentence pairs of the first of these found (MNLI is the larger pool)
# --planted-targets: distil the teacher's logits (MSE); its logits and its final hidden states on every token; or learn
# its classes
TARGETS = ("logits", "hidden", "labels")


@dataclass(frozen=True)
class PlantedSetup:
    """Every choice that decides the planted task's rows (recorded in the summary, part of the cache key)."""

    spec: dict[str, int]  # short module name -> planted rank
    seed: int  # --planted-seed: the updates, the candidate inputs and their order
    strength: float | str  # every planted singular value is this times the module's largest one; or "auto"
    train_rows: int
    eval_rows: int
    classes: int
    targets: str = "logits"  # what the student learns from: the teacher's logits (and hidden states) or classes
    max_strength: float = STRENGTH_LADDER[-1]  # the largest rung "auto" may choose

    def record(self) -> dict:
        return asdict(self)


# -- the teacher -------------------------------------------------------------------------------------------------
def _adapted(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """Short name -> every Linear, and GPT-2's Conv1D (its weight stored in x out)."""
    return {short_module_name(n): m for n, m in model.named_modules() if isinstance(m, (torch.nn.Linear, Conv1D))}


def _out_in(module: torch.nn.Module, tensor: torch.Tensor) -> torch.Tensor:
    """A weight (or update) of ``module`` as out x in, nn.Linear's layout (Conv1D's is its transpose)."""
    return tensor.T if isinstance(module, Conv1D) else tensor


@dataclass
class InputMoments:
    """What a module's inputs (every real token's input vector; padding left out) look like over some rows: the
    sum of x·xᵀ (in x in), the sum of x, and the number of tokens, float64 on the CPU."""

    second: torch.Tensor
    first: torch.Tensor
    tokens: int

    def covariance(self) -> torch.Tensor:
        """The centred covariance of the inputs (in x in)."""
        mean = self.first / max(self.tokens, 1)
        return self.second / max(self.tokens, 1) - torch.outer(mean, mean)

    def mean_square(self) -> torch.Tensor:
        """E[x·xᵀ] (in x in): ||ΔW·Xᵀ||_F² / tokens = trace(ΔW·E[x·xᵀ]·ΔWᵀ) for any update ΔW."""
        return self.second / max(self.tokens, 1)


@torch.no_grad()
def input_moments(model: torch.nn.Module, names, encoded: list[dict]) -> dict[str, InputMoments]:
    """InputMoments of each module in ``names`` (short names) of ``model`` over the batches ``encoded``: forward
    hooks read the input of every module as the model computes it; the attention mask leaves padding out."""
    modules = _adapted(model)
    found = {name: InputMoments(torch.zeros(0), torch.zeros(0), 0) for name in names}
    mask: list[torch.Tensor | None] = [None]

    def hook_for(name):
        def hook(module, args, output):
            x = args[0].detach().to("cpu", torch.float64)
            keep = mask[0]
            rows = x[keep.bool()] if keep is not None and keep.shape == x.shape[:-1] else x.reshape(-1, x.shape[-1])
            moments = found[name]
            if moments.tokens == 0:
                moments.second, moments.first = rows.T @ rows, rows.sum(0)
            else:
                moments.second += rows.T @ rows
                moments.first += rows.sum(0)
            moments.tokens += rows.shape[0]
        return hook

    handles = [modules[name].register_forward_hook(hook_for(name)) for name in names]
    try:
        for batch in encoded:
            mask[0] = batch.get("attention_mask")
            _logits(model, batch)
    finally:
        for handle in handles:
            handle.remove()
    return found


def principal_basis(covariance: torch.Tensor, rank: int, share: float = PRINCIPAL_SHARE) -> torch.Tensor:
    """The leading eigenvectors (in x d) of a covariance that hold ``share`` of its variance, d >= ``rank`` (and at
    most its size): the directions the inputs take."""
    values, vectors = torch.linalg.eigh(covariance.double())
    values, vectors = values.flip(0).clamp(min=0), vectors.flip(1)
    total = float(values.sum())
    held = int((torch.cumsum(values, 0) < share * total).sum()) + 1 if total > 0 else len(values)
    return vectors[:, :min(len(values), max(rank, held))]


def planted_updates(model: torch.nn.Module, setup: PlantedSetup, inputs: dict[str, InputMoments],
                    strength: float = 1.0) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """ΔW (out x in) per planted module: U·diag(σ)·Vᵀ with U random orthonormal and V a random orthonormal basis of
    an r-dimensional subspace of the principal subspace of the module's ``inputs`` (so the inputs excite every
    planted direction, and the rank is exactly the planted rank r), every σ = ``strength`` x the module's largest
    singular value. The random parts are drawn from ``setup.seed`` alone, module by module in name order; the inputs
    are the base model's on the calibration rows, which depend on that seed too. Returns the updates and the size d
    of each module's principal subspace."""
    modules = _adapted(model)
    generator = torch.Generator().manual_seed(setup.seed)
    updates, dims = {}, {}
    for name in sorted(setup.spec):
        module, rank = modules[name], setup.spec[name]
        weight = _out_in(module, module.weight.detach().float().cpu())
        out_f, in_f = weight.shape
        u = torch.linalg.qr(torch.randn(out_f, rank, generator=generator)).Q
        basis = principal_basis(inputs[name].covariance(), rank)
        mix = torch.randn(basis.shape[1], rank, generator=generator, dtype=torch.float64)
        v = torch.linalg.qr(basis @ mix).Q.float()
        sigma = strength * torch.linalg.matrix_norm(weight, ord=2)
        updates[name] = (sigma * u @ v.T).to(module.weight.dtype)
        dims[name] = basis.shape[1]
    return updates, dims


def make_teacher(model: torch.nn.Module, updates: dict[str, torch.Tensor]) -> torch.nn.Module:
    """A copy of ``model`` with the planted updates added to its weights; ``model`` itself is not changed."""
    teacher = copy.deepcopy(model)
    set_updates(teacher, model, updates)
    return teacher.eval()


@torch.no_grad()
def set_updates(teacher: torch.nn.Module, model: torch.nn.Module, updates: dict[str, torch.Tensor]) -> None:
    """The teacher's planted modules := the model's weight + their update (the teacher is a copy of the model)."""
    originals = _adapted(model)
    for name, module in _adapted(teacher).items():
        if name in updates:
            base = originals[name].weight
            module.weight.copy_(base + _out_in(module, updates[name]).to(base.device, base.dtype))


def classifier_layer(model: torch.nn.Module) -> torch.nn.Linear | None:
    """The head's last Linear (DeBERTa/BERT ``classifier``, decoders' ``score``, which has no bias)."""
    for name in ("classifier", "score"):
        layer = getattr(model, name, None)
        layer = getattr(layer, "out_proj", layer)  # RoBERTa's head keeps its Linear in out_proj
        if isinstance(layer, torch.nn.Linear):
            return layer
    return None


def _has_bias(model) -> bool:
    head = classifier_layer(model)
    return head is not None and head.bias is not None


def balancing_shift(logits: torch.Tensor) -> torch.Tensor:
    """The class-bias shift after which the arg-max of ``logits`` (inputs x classes) picks every class about equally
    often: a random head predicts some classes almost nowhere. Sinkhorn-style balancing of a sharp softmax
    (temperature well below the logits' spread over inputs): lower the bias of classes predicted too often, raise
    the others, until each holds about 1/classes of the inputs."""
    logits = logits.double()
    classes = logits.shape[1]
    shift = torch.zeros(classes, dtype=torch.float64)
    temperature = 0.1 * float(logits.std(0).mean()) + 1e-12
    for _ in range(1000):
        share = torch.softmax((logits + shift) / temperature, dim=-1).mean(0)
        shift -= temperature * torch.log(share * classes)
        shift -= shift.mean()
    return shift


def agreement(base_logits: torch.Tensor, teacher_logits: torch.Tensor, shift: torch.Tensor) -> float:
    """The share of inputs on which the base model predicts the teacher's class, both heads shifted by ``shift``."""
    base, taught = (base_logits.double() + shift).argmax(-1), (teacher_logits.double() + shift).argmax(-1)
    return float((base == taught).double().mean())


@torch.no_grad()
def _logits(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        return model(**{k: v.to(device) for k, v in batch.items()}).logits.float().cpu()
    finally:
        model.train(was_training)


def _all_logits(model, encoded: list[dict]) -> torch.Tensor:
    return torch.cat([_logits(model, batch) for batch in encoded])


MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def final_states(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    """The model's last hidden states (batch x tokens x hidden) on ``batch``: what every token ends as, before the
    head reads one of them."""
    inputs = {k: batch[k] for k in MODEL_INPUTS if k in batch}
    return model(**inputs, output_hidden_states=True).hidden_states[-1]


def masked_mean_square(difference: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The mean of ``difference``² over the real tokens (padding left out) and the hidden dimensions."""
    keep = attention_mask.unsqueeze(-1).to(difference.dtype)
    return (difference.square() * keep).sum() / (keep.sum() * difference.shape[-1]).clamp(min=1)


class HiddenStateTargets:
    """--planted-targets hidden: besides the logits, the student matches the teacher's final hidden states on every
    real token. The logits read one token through the head; on a model whose first token barely varies (a
    mean-pooled sentence encoder such as all-MiniLM-L6-v2) many updates fit them, the planted ones no better than
    others. Every token's final state does tell the planted updates apart. The term is the mean square difference
    over real tokens and hidden dimensions divided by ``scale``, the base model's own on the calibration inputs, so
    that it starts near 1 (as the logits' MSE does, with their unit spread) on any model."""

    def __init__(self, teacher: torch.nn.Module, scale: float):
        self.teacher, self.scale = teacher, scale

    def to(self, device) -> HiddenStateTargets:
        self.teacher.to(device)
        return self

    def loss(self, student_states: torch.Tensor, batch: dict) -> torch.Tensor:
        with torch.no_grad():
            target = final_states(self.teacher, batch)
        difference = student_states - target.to(student_states.dtype)
        return masked_mean_square(difference, batch["attention_mask"]) / self.scale

    @contextmanager
    def added_to_loss(self, model: torch.nn.Module, batch: dict):
        """While inside: every forward pass of ``model`` (called with output_hidden_states) returns its own loss plus
        this term on ``batch``."""
        def hook(module, args, output):
            term = self.loss(output.hidden_states[-1], batch)
            output["loss"] = term if output.loss is None else output.loss + term  # a ModelOutput's key and field
            return output

        handle = model.register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()


@torch.no_grad()
def hidden_scale(model: torch.nn.Module, teacher: torch.nn.Module, encoded: list[dict]) -> float:
    """The mean square difference between the base model's and the teacher's final hidden states over the real
    tokens of ``encoded``: what HiddenStateTargets divides by."""
    was_training = model.training
    model.eval()
    try:
        total, tokens = 0.0, 0.0
        for batch in encoded:
            mask = batch["attention_mask"]
            difference = final_states(model, batch).double() - final_states(teacher, batch).double()
            kept = float(mask.sum()) * difference.shape[-1]
            total += float(masked_mean_square(difference, mask)) * kept
            tokens += kept
        return max(total / max(tokens, 1.0), 1e-12)
    finally:
        model.train(was_training)


def calibrate(model, unit_updates: dict[str, torch.Tensor], encoded: list[dict], strength: float | str,
              max_strength: float = STRENGTH_LADDER[-1]):
    """The teacher at the given strength, or for "auto" at the smallest rung of STRENGTH_LADDER (up to
    ``max_strength``) at which the base model agrees with it on at most BASE_AGREEMENT of the inputs (the largest
    rung allowed if none does), with the head
    shift that balances its classes. Agreement falls as the strength grows, so "auto" bisects the ladder (about 6 rungs
    tried, not 17). Returns (teacher, strength, shift, base agreement), before the shift is applied to any head,
    and the scale that gives the teacher's logits a spread of 1 over the inputs."""
    base_logits = _all_logits(model, encoded)
    teacher = copy.deepcopy(model).eval()
    tried: dict[float, tuple] = {}

    def attempt(rung: float) -> tuple:
        if rung not in tried:
            set_updates(teacher, model, {n: rung * u for n, u in unit_updates.items()})
            teacher_logits = _all_logits(teacher, encoded)
            shift = balancing_shift(teacher_logits) if _has_bias(model) else \
                torch.zeros(teacher_logits.shape[1], dtype=torch.float64)
            tried[rung] = (teacher_logits, shift, agreement(base_logits, teacher_logits, shift))
        return tried[rung]

    if strength == "auto":
        ladder = [r for r in STRENGTH_LADDER if r <= max_strength]
        low, high = 0, len(ladder) - 1  # the answer is in low..high: the top, or the first that gets there
        if attempt(ladder[high])[2] <= BASE_AGREEMENT:
            while low < high:
                middle = (low + high) // 2
                if attempt(ladder[middle])[2] <= BASE_AGREEMENT:
                    high = middle
                else:
                    low = middle + 1
        rung = ladder[high]
    else:
        rung = float(strength)
    teacher_logits, shift, agreed = attempt(rung)
    set_updates(teacher, model, {n: rung * u for n, u in unit_updates.items()})  # the rung chosen, not the last tried
    # A random or new head's logits are small (about 0.1 apart on tiny-deberta): their MSE would be a thousandth of
    # AdaLoRA's orthogonal regulariser. A unit spread makes distilling them weigh like a classification loss.
    scale = 1.0 / max(float(teacher_logits.std(0).mean()), 1e-12) if classifier_layer(model) is not None else 1.0
    return teacher, rung, shift, agreed, scale


def rescale_heads(shift: torch.Tensor, scale: float, *models: torch.nn.Module) -> None:
    """Every model's head := its class biases (if any) shifted by ``shift``, then weights and biases times
    ``scale`` (the same for all: the student starts from the teacher's head). Scaling all logits keeps every arg-max."""
    with torch.no_grad():
        for model in models:
            head = classifier_layer(model)
            if head is None:
                continue
            if head.bias is not None:
                head.bias += shift.to(head.bias.dtype)
                head.bias *= scale
            head.weight *= scale


# -- candidate inputs ----------------------------------------------------------------------------------------------
def candidate_pairs(setup: PlantedSetup, data_dir: str | None, log=print) -> tuple[list[tuple[str, str]], str]:
    """The sentence pairs to label, in order, and where they come from: word sequences of the tool's own generator,
    or the sentence pairs of a local GLUE copy (MNLI, else RTE; every split, gold labels unused), shuffled."""
    rng = random.Random(setup.seed)
    needed = max(setup.train_rows + setup.eval_rows, CALIBRATION_ROWS)
    if data_dir is None:
        pairs = [(" ".join(rng.choices(SYNTHETIC_WORDS, k=rng.randint(5, 10))),
                  " ".join(rng.choices(SYNTHETIC_WORDS, k=rng.randint(2, 4)))) for _ in range(needed)]
        return pairs, "generated word sequences"
    for name in GLUE_SOURCES:
        task = TASKS[name]
        try:
            raw = read_local(task, find_local(task, data_dir), log=log)
        except UsageError:
            continue
        pairs = list(dict.fromkeys((a, b) for ds in raw.values() for a, b in zip(*(ds[k] for k in task.text_keys))))
        if len(pairs) < needed:
            raise UsageError(f"--data-dir {data_dir}: GLUE {name} holds {len(pairs):,} distinct sentence pairs, fewer "
                             f"than the {needed:,} rows the planted task asks for; lower --planted-train-rows / "
                             f"--planted-eval-rows")
        rng.shuffle(pairs)
        return pairs[:needed], f"GLUE {name} sentence pairs from {data_dir}"
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
def prepare_teacher(model, tokenizer, task: Task, setup: PlantedSetup, data_dir, max_seq_length: int, log=print,
                    cache_root: Path | None = None, model_id: str | None = None):
    """Build the teacher (updates in the principal subspace of the base model's inputs on the calibration rows,
    strength chosen by ``calibrate``) and centre and scale the shared head (both every run, so a cached dataset
    matches the model). Returns (teacher, candidate pairs, record for the summary, the planted updates ΔW at the
    strength used). With ``cache_root`` (and the model's ``model_id``), what the calibration finds is kept there for
    exactly this model, tokenizer, setup, construction, inputs and sequence length, and read back by the next run
    of the same: a suite's runs of one spec calibrate once, not once each."""
    pairs, inputs = candidate_pairs(setup, data_dir, log=log)
    calibration = [_encode(tokenizer, task, chunk, max_seq_length) for chunk in _chunks(pairs[:CALIBRATION_ROWS])]
    cache = None if cache_root is None else calibration_cache(cache_root, {
        "model": model_id, "setup": setup.record(), "construction": construction_rule(),
        "inputs": inputs_fingerprint(inputs, data_dir), "tokenizer": tokenizer_fingerprint(tokenizer),
        "max_seq_length": max_seq_length})
    found = _read_calibration(cache, log)
    if found is None:
        unit, dims = planted_updates(model, setup, input_moments(model, sorted(setup.spec), calibration))
        teacher, strength, shift, agreed, scale = calibrate(model, unit, calibration, setup.strength,
                                                            setup.max_strength)
        hidden = hidden_scale(model, teacher, calibration) if setup.targets == "hidden" else None
        found = {"unit": unit, "dims": dims, "strength": strength, "shift": shift, "agreed": agreed, "scale": scale,
                 "hidden": hidden}
        _write_calibration(cache, found, log)
    else:
        teacher = copy.deepcopy(model).eval()
        set_updates(teacher, model, {n: found["strength"] * u for n, u in found["unit"].items()})
    unit, strength, shift, agreed, scale = (found[k] for k in ("unit", "strength", "shift", "agreed", "scale"))
    rescale_heads(shift, scale, model, teacher)
    if setup.strength == "auto":
        top = "" if agreed <= BASE_AGREEMENT else "; the largest strength allowed"
        log(f"[data] planted task: strength {strength} (auto: the base model agrees with the teacher on {agreed:.1%} "
            f"of {len(pairs[:CALIBRATION_ROWS])} calibration inputs{top})")
    record = {**setup.record(), "construction": construction_rule(), "principal_dims": found["dims"],
              "strength_used": strength, "base_agreement": agreed, "inputs": inputs,
              "head_bias_shift": shift.tolist(), "head_scale": scale, "labels": list(task.labels)}
    if found["hidden"] is not None:
        record["hidden_scale"] = found["hidden"]
    return teacher, pairs, record, {n: strength * u for n, u in unit.items()}


def inputs_fingerprint(inputs: str, data_dir) -> str:
    """What the candidate inputs were read from, as a digest (``inputs``: candidate_pairs' description)."""
    if data_dir is None:
        return "words"
    return data_fingerprint(next(TASKS[n] for n in GLUE_SOURCES if inputs.startswith(f"GLUE {n} ")), data_dir)


def calibration_cache(cache_root: Path, key: dict) -> Path:
    """Where the calibration for ``key`` (everything that decides it) is kept."""
    text = json.dumps({**key, "calibration_rows": CALIBRATION_ROWS}, sort_keys=True)
    return cache_root / "planted_teacher" / f"{hashlib.sha256(text.encode()).hexdigest()[:16]}.pt"


def _read_calibration(path: Path | None, log) -> dict | None:
    if path is None or not path.exists():
        return None
    try:
        found = torch.load(path, weights_only=True)
    except Exception as exc:  # a truncated or foreign file: calibrate again (and write it anew)
        log(f"[data] planted task: could not read the cached calibration {path} ({type(exc).__name__}); calibrating")
        return None
    found["shift"] = torch.tensor(found["shift"], dtype=torch.float64)
    log(f"[data] planted task: calibration loaded from cache {path}")
    return found


def _write_calibration(path: Path | None, found: dict, log) -> None:
    if path is None:
        return
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({**found, "shift": found["shift"].tolist()}, tmp)
        os.replace(tmp, path)
    except OSError as exc:  # a read-only or full disk must not stop the run; the next run calibrates again
        log(f"[data] could not cache the planted calibration ({exc}); continuing without cache")
    finally:
        tmp.unlink(missing_ok=True)


@dataclass
class PlantedAnswer:
    """What the learned updates are measured against: the planted updates ΔW_p (out x in) and, per planted module,
    the moments of its inputs in the teacher over the validation rows (adalora/recovery.py: recovery on the
    data)."""

    deltas: dict[str, torch.Tensor]
    eval_inputs: dict[str, InputMoments]


def label_rows(teacher, tokenizer, task: Task, setup: PlantedSetup, pairs, max_seq_length: int) -> DatasetDict:
    """Validation rows (the first ``eval_rows`` candidates) and training rows (the next ``train_rows``), each with
    the teacher's logits (``targets`` logits) or class (``targets`` labels) as its label. No row is rejected."""
    pairs = pairs[:setup.eval_rows + setup.train_rows]
    logits = torch.cat([_logits(teacher, _encode(tokenizer, task, chunk, max_seq_length)) for chunk in _chunks(pairs)])
    labels = logits.argmax(-1).tolist() if setup.targets == "labels" else logits.tolist()
    k0, k1 = task.text_keys
    out = {}
    for split, rows in (("validation", slice(0, setup.eval_rows)), (task.train_split, slice(setup.eval_rows, None))):
        out[split] = Dataset.from_dict({k0: [p[0] for p in pairs[rows]], k1: [p[1] for p in pairs[rows]],
                                        "label": labels[rows]})
    return DatasetDict(out)


def planted_dataset(teacher, tokenizer, task: Task, setup: PlantedSetup, pairs, max_seq_length: int,
                    log=print) -> DatasetDict:
    """The planted rows, tokenized as every task's rows are."""
    raw = label_rows(teacher, tokenizer, task, setup, pairs, max_seq_length)
    log(f"[data] planted task: {len(raw[task.train_split]):,} training and {len(raw['validation']):,} validation rows "
        f"labelled by the teacher ({'its classes' if setup.targets == 'labels' else 'its logits'}"
        f"{'; the student also matches its final hidden states on every token' if setup.targets == 'hidden' else ''})")
    return tokenize(task, raw, tokenizer, max_seq_length)


# -- what train.py calls -------------------------------------------------------------------------------------------
def parse_strength(text) -> float | str:
    """--planted-strength: "auto" or a number > 0 (a one-line UsageError otherwise)."""
    if str(text).strip().lower() == "auto":
        return "auto"
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0 or value == float("inf"):
        raise UsageError(f"--planted-strength {text!r} is neither 'auto' nor a number > 0; e.g. --planted-strength 2")
    return value


def planted_setup_from_args(data_args, ada_args, module_names: list[str]) -> PlantedSetup:
    """The spec (given, drawn or default), checked against the adapted modules and the budget; bad values are one-line
    UsageErrors, raised before anything is built or written."""
    strength = parse_strength(data_args.planted_strength)
    if not STRENGTH_LADDER[0] <= data_args.planted_max_strength <= STRENGTH_LADDER[-1]:
        raise UsageError(f"--planted-max-strength {data_args.planted_max_strength:g} is outside the strength ladder "
                         f"{STRENGTH_LADDER[0]}..{STRENGTH_LADDER[-1]}; e.g. --planted-max-strength 0.5")
    if min(data_args.planted_train_rows, data_args.planted_eval_rows) < 16:
        raise UsageError("--planted-train-rows and --planted-eval-rows must be >= 16")
    if data_args.planted_targets not in TARGETS:
        raise UsageError(f"--planted-targets {data_args.planted_targets!r} is not one of {', '.join(TARGETS)}")
    if data_args.planted_modules:
        spec = parse_planted_spec(data_args.planted_modules)
    elif data_args.planted_draw is not None:  # one spec of a suite (ablate --planted-suite)
        spec = draw_planted_spec(module_names, ada_args.init_r, ada_args.target_r, data_args.planted_seed,
                                 data_args.planted_draw)
    else:
        spec = default_planted_spec(module_names, ada_args.init_r, ada_args.target_r)
    check_planted_spec(spec, module_names, ada_args.init_r, ada_args.target_r)
    return PlantedSetup(spec=spec, seed=data_args.planted_seed, strength=strength,
                        train_rows=data_args.planted_train_rows, eval_rows=data_args.planted_eval_rows,
                        classes=len(TASKS["planted"].labels), targets=data_args.planted_targets,
                        max_strength=data_args.planted_max_strength)


def prepare_planted_data(model, tokenizer, task: Task, setup: PlantedSetup, data_args, model_id: str, log=print):
    """Teacher, centred head, and what ``load_tokenized`` needs to build (or find cached) the rows: returns
    (record for the summary, build, build_key, the PlantedAnswer: ΔW per module at the strength used and the
    teacher's module inputs on the validation rows, and the HiddenStateTargets with ``--planted-targets hidden``,
    else None)."""
    cache_root = Path(data_args.cache_dir) if getattr(data_args, "cache_dir", None) else default_cache_dir()
    teacher, pairs, record, updates = prepare_teacher(model, tokenizer, task, setup, data_args.data_dir,
                                                      data_args.max_seq_length, log=log, cache_root=cache_root,
                                                      model_id=model_id)
    validation = [_encode(tokenizer, task, chunk, data_args.max_seq_length)
                  for chunk in _chunks(pairs[:setup.eval_rows])]
    answer = PlantedAnswer(updates, input_moments(teacher, sorted(setup.spec), validation))

    def build():
        return planted_dataset(teacher, tokenizer, task, setup, pairs, data_args.max_seq_length, log=log)

    # The rows depend on the model's weights (from --planted-seed for tiny-deberta, from its files otherwise), the
    # setup and the inputs; the key says so.
    build_key = {"model": model_id, "setup": setup.record(), "construction": record["construction"],
                 "inputs": inputs_fingerprint(record["inputs"], data_args.data_dir), "v": 3}
    hidden = HiddenStateTargets(teacher, record["hidden_scale"]) if setup.targets == "hidden" else None
    return record, build, build_key, answer, hidden


def without_dropout(model: torch.nn.Module) -> None:
    """Every dropout of ``model`` at p=0 (planted_spec.student_rule): the teacher computes without dropout, and a
    student that drops activations could not match it even with the planted updates (on MiniLM, dropout 0.1 moves
    the final hidden states tens of times further than the planted updates do). Attention reads its dropout's p too."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


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

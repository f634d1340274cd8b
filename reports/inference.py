"""What each high-level API infers from the data and what its user states by hand.

The public argument (Flash's ``ImageClassifier(num_classes=datamodule.num_classes)`` versus
fastai learners that read the class count off the DataLoaders) as data the report can render.
Each row names the library version it was read from and the source lines that decide it, so
the claim can be checked; ``inferred`` means the API reads it from the data without the user
passing it, ``stated`` that the user passes it (possibly read off a data object by hand).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True, kw_only=True)
class InferenceRow:
    library: str
    version: str
    entry_point: str
    num_classes: str
    """``inferred`` or ``stated`` (with how)."""
    input_shape: str
    stated_by_hand: tuple[str, ...]
    evidence: str
    """Where in the library's source this is decided."""


INFERENCE_TABLE: tuple[InferenceRow, ...] = (
    InferenceRow(
        library="lightning-flash",
        version="0.8.2",
        entry_point="ImageClassifier(backbone=..., num_classes=datamodule.num_classes)",
        num_classes="stated: the user copies datamodule.num_classes (the DataModule infers it from the labels)",
        input_shape="not stated: the backbone's adaptive pooling takes any image size; 3 channels assumed",
        stated_by_hand=("num_classes", "backbone", "learning_rate/optimizer"),
        evidence="flash/image/classification/data.py docstring; flash/core/data/data_module.py DataModule.num_classes",
    ),
    InferenceRow(
        library="lightning-flash",
        version="0.8.2",
        entry_point="flash.Task(model=..., loss_fn=...) / ClassificationTask(num_classes=...) (what bakeoff runs)",
        num_classes="stated: the model's output layer; ClassificationTask(num_classes=) only sizes metrics",
        input_shape="stated: the user's model",
        stated_by_hand=("model", "loss_fn", "optimizer", "learning_rate", "num_classes (ClassificationTask)"),
        evidence="flash/core/model.py Task.__init__; flash/core/classification.py ClassificationMixin._build",
    ),
    InferenceRow(
        library="keras",
        version="3.15.1",
        entry_point="keras.Sequential([..., layers.Dense(num_classes)]); model.compile(...); model.fit(x, y)",
        num_classes="stated: units of the final Dense layer (SparseCategoricalCrossentropy needs no class count)",
        input_shape="inferred: a model without keras.Input is built on the first batch fit() sees",
        stated_by_hand=("num_classes (Dense units)", "loss", "optimizer"),
        evidence="keras/src/models/sequential.py (deferred build on first call)",
    ),
    InferenceRow(
        library="transformers (Trainer)",
        version="5.23",
        entry_point="AutoModelForSequenceClassification.from_pretrained(name, num_labels=N); Trainer(model, args, ...)",
        num_classes="stated: num_labels (defaults to 2 when omitted, silently, for a new head)",
        input_shape="from the checkpoint's config and tokenizer, not the data",
        stated_by_hand=("num_labels", "model name", "TrainingArguments"),
        evidence="transformers/configuration_utils.py PretrainedConfig.__init__ num_labels default 2",
    ),
    InferenceRow(
        library="fastai",
        version="2.8.12",
        entry_point="vision_learner(dls, resnet18)",
        num_classes="inferred: n_out = get_c(dls) (the DataLoaders' vocab size)",
        input_shape="channels stated (n_in=3 default), image size free (adaptive pooling)",
        stated_by_hand=("arch", "n_in when not RGB"),
        evidence="fastai/vision/learner.py vision_learner: `if n_out is None: n_out = get_c(dls)`",
    ),
    InferenceRow(
        library="fastai",
        version="2.8.12",
        entry_point="tabular_learner(dls, layers=[200, 100])",
        num_classes="inferred: n_out = get_c(dls)",
        input_shape="inferred: embedding sizes from category cardinalities, len(dls.cont_names) continuous inputs",
        stated_by_hand=("layers", "cat_names/cont_names/y_names (in TabularDataLoaders)"),
        evidence="fastai/tabular/learner.py tabular_learner: get_emb_sz(dls.train_ds), get_c(dls)",
    ),
)


def inference_table() -> list[dict]:
    """The table as plain rows (for reports/JSON)."""
    return [asdict(row) for row in INFERENCE_TABLE]


def markdown() -> str:
    header = "| library | entry point | number of classes | input shape | stated by hand |\n|---|---|---|---|---|\n"
    rows = "".join(
        f"| {row.library} {row.version} | `{row.entry_point}` | {row.num_classes} | {row.input_shape} | "
        f"{', '.join(row.stated_by_hand)} |\n"
        for row in INFERENCE_TABLE
    )
    return header + rows

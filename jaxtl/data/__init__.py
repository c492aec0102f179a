"""jaxtl.data: datasets, A -> B task construction and the input pipeline.

from jaxtl import data
ds = data.load("mnist5k")                          # 5,000 real digits, no network
task_a, task_b = data.class_split(ds, classes_a=range(5))
task_b = data.few_shot(task_b, n_per_class=10, seed=0)
shifted = data.apply_shift(ds, "rotate", degrees=30)
key = data.fingerprint("npz:train.npz")           # changes when the file's contents change
"""

from jaxtl.data.dataset import (
    DataError,
    Dataset,
    check_finite,
    check_labels,
    first_nonfinite,
    from_arrays,
    stratified_split,
)
from jaxtl.data.datasets import (
    Mnist1dOptions,
    describe,
    load,
    load_digits,
    load_mnist1d,
    load_mnist5k,
    names,
    option_names,
)
from jaxtl.data.fashion_mnist import load_fashion_mnist
from jaxtl.data.fingerprints import data_files, fingerprint
from jaxtl.data.idx import read_idx
from jaxtl.data.npz import load_npz
from jaxtl.data.pipeline import (
    DATA_AXIS,
    NormStats,
    batch_gather,
    batch_indices,
    data_mesh,
    data_sharding,
    device_dataset,
    device_put_sharded_batch,
    epoch_permutation,
    normalization_stats,
    normalize,
    process_slice,
    replicated_sharding,
)
from jaxtl.data.shifts import SHIFTS, apply_shift, describe_shift, resize, shift_array
from jaxtl.data.tasks import (
    OOD_SHIFT,
    class_split,
    cross_dataset_pair,
    few_shot,
    ood_split,
    permute_labels,
)
from jaxtl.data.tfds import load_tfds, tfds_names

__all__ = [
    "DATA_AXIS",
    "OOD_SHIFT",
    "SHIFTS",
    "DataError",
    "Dataset",
    "Mnist1dOptions",
    "NormStats",
    "apply_shift",
    "batch_gather",
    "batch_indices",
    "check_finite",
    "check_labels",
    "class_split",
    "cross_dataset_pair",
    "data_files",
    "data_mesh",
    "data_sharding",
    "describe",
    "describe_shift",
    "device_dataset",
    "device_put_sharded_batch",
    "epoch_permutation",
    "few_shot",
    "fingerprint",
    "first_nonfinite",
    "from_arrays",
    "load",
    "load_digits",
    "load_fashion_mnist",
    "load_mnist1d",
    "load_mnist5k",
    "load_npz",
    "load_tfds",
    "names",
    "normalization_stats",
    "normalize",
    "ood_split",
    "option_names",
    "permute_labels",
    "process_slice",
    "read_idx",
    "replicated_sharding",
    "resize",
    "shift_array",
    "stratified_split",
    "tfds_names",
]

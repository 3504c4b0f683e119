"""What one deployed client holds on its device: its training interactions, its held-out items
with their evaluation negatives, and the public item catalogue.

``write_shards`` cuts a data set into one shard per client the way the simulator partitions
it (same split, same partition), so a deployment and a simulation of one configuration train
on exactly the same data. In a real federation each device already has its own data; the
shard format is then what a device's data must be converted to.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from fedrec.federated.plan import ClientGroup
from fedrec.utils.atomic import atomic_write_text

if TYPE_CHECKING:
    # Runtime imports are inside the functions that need them: a deployed client answering
    # "hello" or a SecAgg+ stage reads shard metadata only, and must not load pandas.
    from fedrec.config import RunConfig
    from fedrec.data.table import Holdout, Split

IntArray = npt.NDArray[np.int64]
SHARD_FILE = "shard.npz"
META_FILE = "shard.json"
FORMAT = 1


class ShardError(ValueError):
    """A shard directory that cannot be used; the message says what is wrong."""


def data_fingerprint(cfg: RunConfig) -> str:
    """What must agree between the server and every client: the data, split and model shape.
    A client refuses a run whose fingerprint differs from its shard's."""
    keys = {
        "data": cfg.data.model_dump(mode="json", exclude={"dir"}),
        "seed": cfg.seed,
        "partition": cfg.federated.partition,
        "silos": cfg.federated.silos,
        "silo_column": cfg.federated.silo_column,
    }
    return hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ClientShard:
    client_id: int
    users: IntArray
    """Global ids of the client's users (its private rows, in order)."""
    raw_users: list[str]
    group: ClientGroup
    """The client's training interactions (a group of one)."""
    valid: Holdout
    test: Holdout
    """Global user ids in the hold-outs, as in the simulator's split."""
    n_users: int
    n_items: int
    item_ids: list[str]
    titles: list[str] | None
    fingerprint: str

    @property
    def n_examples(self) -> int:
        return int(self.group.sizes[0])

    def save(self, directory: Path) -> None:
        """Write atomically: a new directory is filled beside the target, then renamed."""
        directory = Path(directory)
        tmp = directory.with_name(f".{directory.name}.tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        arrays: dict[str, Any] = {
            "users": self.users,
            "train_users": self.group.users,
            "train_items": self.group.items,
            "train_ratings": self.group.ratings,
        }
        for name, h in (("valid", self.valid), ("test", self.test)):
            arrays[f"{name}_users"] = h.users
            arrays[f"{name}_items"] = h.items
            arrays[f"{name}_ratings"] = h.ratings
            if h.negatives is not None:
                arrays[f"{name}_negatives"] = h.negatives
        with open(tmp / SHARD_FILE, "wb") as fh:
            np.savez(fh, **arrays)
        meta = {
            "format": FORMAT,
            "client_id": self.client_id,
            "raw_users": self.raw_users,
            "n_users": self.n_users,
            "n_items": self.n_items,
            "item_ids": self.item_ids,
            "titles": self.titles,
            "fingerprint": self.fingerprint,
        }
        atomic_write_text(tmp / META_FILE, json.dumps(meta))
        if directory.exists():
            old = directory.with_name(f".{directory.name}.old")
            if old.exists():
                shutil.rmtree(old)
            directory.rename(old)
            tmp.rename(directory)
            shutil.rmtree(old)
        else:
            tmp.rename(directory)

    @staticmethod
    def load(directory: Path) -> ClientShard:
        directory = Path(directory)
        meta_path, arr_path = directory / META_FILE, directory / SHARD_FILE
        if not (meta_path.is_file() and arr_path.is_file()):
            raise ShardError(
                f"{directory} is not a client shard (needs {META_FILE} and {SHARD_FILE}; "
                "write shards with `fedrec deploy shards CONFIG --out DIR`)"
            )
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != FORMAT:
            raise ShardError(f"{meta_path}: shard format {meta.get('format')}, expected {FORMAT}")
        with np.load(arr_path) as z:
            a = {k: z[k] for k in z.files}
        from fedrec.data.table import Holdout

        def holdout(name: str) -> Holdout:
            neg = a.get(f"{name}_negatives")
            return Holdout(
                users=a[f"{name}_users"].astype(np.int64),
                items=a[f"{name}_items"].astype(np.int64),
                ratings=a[f"{name}_ratings"].astype(np.float32),
                negatives=None if neg is None else neg.astype(np.int64),
            )

        users = a["users"].astype(np.int64)
        n_rows = len(a["train_items"])
        group = ClientGroup(
            client_ids=np.array([int(meta["client_id"])], dtype=np.int64),
            offsets=np.array([0, n_rows], dtype=np.int64),
            users=a["train_users"].astype(np.int64),
            items=a["train_items"].astype(np.int64),
            ratings=a["train_ratings"].astype(np.float32),
            n_local_users=np.array([len(users)], dtype=np.int64),
            n_items=int(meta["n_items"]),
        )
        return ClientShard(
            client_id=int(meta["client_id"]),
            users=users,
            raw_users=list(meta["raw_users"]),
            group=group,
            valid=holdout("valid"),
            test=holdout("test"),
            n_users=int(meta["n_users"]),
            n_items=int(meta["n_items"]),
            item_ids=list(meta["item_ids"]),
            titles=meta.get("titles"),
            fingerprint=str(meta["fingerprint"]),
        )


def describe(directory: Path) -> dict[str, Any]:
    """What a client tells the server when it joins (no training data, only sizes)."""
    directory = Path(directory)
    meta_path, arr_path = directory / META_FILE, directory / SHARD_FILE
    if not (meta_path.is_file() and arr_path.is_file()):
        raise ShardError(f"{directory} is not a client shard (needs {META_FILE} and {SHARD_FILE})")
    meta = json.loads(meta_path.read_text())
    with np.load(arr_path) as z:
        n_examples, n_local = len(z["train_items"]), len(z["users"])
    return {
        "client_id": int(meta["client_id"]),
        "fingerprint": str(meta["fingerprint"]),
        "n_examples": int(n_examples),
        "n_local_users": int(n_local),
        "n_users": int(meta["n_users"]),
        "n_items": int(meta["n_items"]),
    }


def _rows(h: Holdout, users: IntArray) -> Holdout:
    from fedrec.data.table import Holdout

    keep = np.isin(h.users, users)
    return Holdout(
        users=h.users[keep],
        items=h.items[keep],
        ratings=h.ratings[keep],
        negatives=None if h.negatives is None else h.negatives[keep],
    )


def shards_of(cfg: RunConfig, split: Split) -> list[ClientShard]:
    """Every client's shard, partitioned exactly as the simulator partitions ``split``."""
    # Imported here: they pull in torch, which a client answering "hello" does not need.
    from fedrec.federated.configure import make_partition
    from fedrec.federated.partition import client_groups

    train = split.train
    partition = make_partition(cfg, split)
    groups = client_groups(train, partition)
    titles = None
    if train.item_features is not None and "title" in train.item_features.columns:
        titles = [str(t) for t in train.item_features["title"].tolist()]
    item_ids = [str(i) for i in train.item_ids.tolist()]
    fp = data_fingerprint(cfg)
    out = []
    for c in range(partition.n_clients):
        users = partition.users_of(c)
        out.append(
            ClientShard(
                client_id=c,
                users=users,
                raw_users=[str(train.user_ids[u]) for u in users],
                group=groups.select(np.array([c], dtype=np.int64)),
                valid=_rows(split.valid, users),
                test=_rows(split.test, users),
                n_users=train.n_users,
                n_items=train.n_items,
                item_ids=item_ids,
                titles=titles,
                fingerprint=fp,
            )
        )
    return out


def shard_dir(root: Path, client: int) -> Path:
    return Path(root) / f"client-{client:05d}"


def write_shards(cfg: RunConfig, split: Split, root: Path) -> list[Path]:
    """One directory per client under ``root`` (``client-00000``, ...); returns them."""
    paths = []
    for shard in shards_of(cfg, split):
        path = shard_dir(root, shard.client_id)
        shard.save(path)
        paths.append(path)
    return paths

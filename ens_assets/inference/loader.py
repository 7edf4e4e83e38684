"""Decoding and cropping in DataLoader worker processes: one photo in, the crops of every crop rule out.

Each rule's crops are cut exactly as the crop cache cuts them (ens_assets.data.crops.image_crops at the
cache size) and resized to the member's input size as training does (resize_crops), so a member sees new
photos as it saw its test crops.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import threading
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from ens_assets.data.crops import image_crops
from ens_assets.data.images import ImageProblem, load_rgb
from ens_assets.inference.artefact import CropRule
from ens_assets.inference.inputs import Detections, ImageInput
from ens_assets.training.augment import resize_crops


@dataclass
class CropBatch:
    """A batch of photos: per rule, every crop (uint8 N x S x S x 3) and the batch position it belongs to."""

    index: list[int]  # positions in the image list
    problem: list[str | None]  # why a photo could not be read (then it has no crops)
    crops: list[torch.Tensor]  # per rule
    owner: list[torch.Tensor]  # per rule: batch position of each crop
    boxes_used: list[list[list[tuple]]]  # per rule, per photo: the boxes cropped (empty: full-frame fallback)

    def pin_memory(self) -> "CropBatch":
        self.crops = [c.pin_memory() for c in self.crops]
        return self


class PhotoCrops(Dataset):
    def __init__(self, images: list[ImageInput], rules: list[CropRule], detections: Detections):
        self.images = images
        self.rules = rules
        self.settings = [r.settings() for r in rules]
        self.boxes = [detections.boxes.get(r, {}) for r in rules]
        self.max_pixels = max(r.max_pixels for r in rules)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        image = self.images[i]
        try:
            photo = Image.fromarray(load_rgb(image.path, self.max_pixels))
        except ImageProblem as problem:
            return {"index": i, "problem": problem.reason}
        crops, used = [], []
        for rule, settings, boxes in zip(self.rules, self.settings, self.boxes):
            cut = image_crops(photo, boxes.get(image.name, []), settings)
            crops.append(resize_crops(np.stack([c for c, _ in cut]), rule.image_size))
            used.append([b for _, b in cut if b is not None])
        return {"index": i, "problem": None, "crops": crops, "used": used}


def collate(items: list[dict], n_rules: int, sizes: list[int]) -> CropBatch:
    crops: list[list[np.ndarray]] = [[] for _ in range(n_rules)]
    owner: list[list[int]] = [[] for _ in range(n_rules)]
    used: list[list[list[tuple]]] = [[] for _ in range(n_rules)]
    for position, item in enumerate(items):
        for r in range(n_rules):
            if item["problem"] is None:
                crops[r].append(item["crops"][r])
                owner[r].extend([position] * len(item["crops"][r]))
                used[r].append(item["used"][r])
            else:
                used[r].append([])
    return CropBatch(
        index=[item["index"] for item in items],
        problem=[item["problem"] for item in items],
        crops=[torch.from_numpy(np.concatenate(c)) if c else torch.zeros((0, s, s, 3), dtype=torch.uint8)
               for c, s in zip(crops, sizes)],
        owner=[torch.tensor(o, dtype=torch.int64) for o in owner],
        boxes_used=used,
    )


class _Collate:
    """Picklable collate_fn (spawned workers pickle it)."""

    def __init__(self, rules: list[CropRule]):
        self.n_rules, self.sizes = len(rules), [r.image_size for r in rules]

    def __call__(self, items: list[dict]) -> CropBatch:
        return collate(items, self.n_rules, self.sizes)


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # each worker decodes one photo at a time; the main process runs the models


def default_workers() -> int:
    return min(8, os.cpu_count() or 1)


# Up to this many photos one background thread of the predicting process decodes and crops them: starting
# decoding worker processes (each forks, then decodes a whole batch before it hands anything over) costs more
# than their parallelism saves on a batch this small. Measured with bench_predict: see the README's bench table.
IN_PROCESS_MAX_PHOTOS = 256
PREFETCH_BATCHES = 2  # decoded batches a background thread keeps ready ahead of the models


def decode_workers(n_photos: int, requested: int | None = None) -> int:
    """Decoding worker processes for `n_photos`: `requested` when given, none (a background thread) for a
    small input, else default_workers()."""
    if requested is not None:
        return requested
    return 0 if n_photos <= IN_PROCESS_MAX_PHOTOS else default_workers()


class DecodedBatches:
    """The loader's batches, decoding from the moment this is made: in its worker processes, or with none in
    one background thread, so the photos decode while the caller loads the fold models and runs them.

    Iterate once; close() (or leaving the `with` block) stops the thread or the workers early."""

    def __init__(self, loader: DataLoader):
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        if loader.num_workers > 0:
            self._batches: Iterator = iter(loader)  # the workers start now and prefetch
            return
        self._queue: queue.Queue = queue.Queue(maxsize=PREFETCH_BATCHES)
        self._thread = threading.Thread(target=self._decode, args=(loader,), name="decode-photos", daemon=True)
        self._thread.start()
        self._batches = self._from_thread()

    def _decode(self, loader: DataLoader) -> None:
        try:
            for batch in loader:
                if not self._put(("batch", batch)):
                    return
        except BaseException as exc:  # handed to the caller's thread, which raises it
            self._put(("error", exc))
            return
        self._put(("end", None))

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _from_thread(self) -> Iterator[CropBatch]:
        while True:
            kind, value = self._queue.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value

    def __iter__(self) -> Iterator[CropBatch]:
        return self._batches

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        else:
            shutdown = getattr(self._batches, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()

    def __enter__(self) -> "DecodedBatches":
        return self

    def __exit__(self, *_) -> None:
        self.close()


def photo_loader(images: list[ImageInput], rules: list[CropRule], detections: Detections, batch_size: int,
                 workers: int, pin_memory: bool) -> DataLoader:
    context = None
    if workers > 0:
        context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    return DataLoader(
        PhotoCrops(images, rules, detections), batch_size=batch_size, shuffle=False, num_workers=workers,
        collate_fn=_Collate(rules), pin_memory=pin_memory, worker_init_fn=_worker_init if workers else None,
        multiprocessing_context=context, prefetch_factor=4 if workers else None, persistent_workers=False,
    )  # fmt: skip

"""Reading evaluation clips from video files, as UMT's evaluation pipeline does.

One interface over three decoders, chosen by ``dataset.video_reader``:

* ``decord`` (default): what UMT used (``VideoReader(path, num_threads=1)``), so it gives the same pixels as the
  published numbers. Unmaintained since 2022; no macOS/ARM wheels. ``torch`` is imported before it on purpose:
  importing decord first is known to crash later CUDA use.
* ``pyav``: PyAV decodes the stream front to back and keeps the requested frames (exact frame indices, no seek;
  decoded to the end, so a missing tail is noticed).
* ``torchcodec``: ``VideoDecoder(..., seek_mode="exact")`` on the CPU.
* ``auto``: the first of decord, torchcodec, PyAV that loads.

Every reader numbers frames 0..n-1 in decode order, so the same indices give the same frames whichever reader is
used (tests check decord against PyAV). A file that holds fewer frames than its container claims (a truncated
download, a damaged copy) is corrupt for every reader: an MP4 whose boxes run past its end is refused before
decoding, PyAV decodes to the end and compares with the header's count, decord's and torchcodec's counts are
compared with the header's too.

The clip pipeline (:class:`ClipLoader`): ``n = num_frames`` indices by "middle" sampling (the centre frame of each
of ``n`` equal segments, padded with the last index for videos shorter than ``n`` frames; with ``trimmed30`` only
the first 30 s are segmented, as UMT does for DiDeMo), a direct bicubic resize of the uint8 frames to
``img_size x img_size`` (no crop, aspect not kept), ``/255`` and ImageNet mean/std. ``antialias=False`` by default:
UMT ran torchvision 0.13, whose tensor resize did not antialias. Output: float ``[T, 3, img_size, img_size]``.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch  # before decord (see module docstring)
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

__all__ = [
    "READERS",
    "CorruptVideoError",
    "VideoFrames",
    "ClipLoader",
    "available_readers",
    "resolve_reader",
    "read_frames",
    "truncation",
    "sample_middle_indices",
    "trimmed_length",
    "resize_normalize",
]

#: Values accepted by ``dataset.video_reader``.
READERS: tuple[str, ...] = ("decord", "pyav", "torchcodec", "auto")
_AUTO_ORDER: tuple[str, ...] = ("decord", "torchcodec", "pyav")


class CorruptVideoError(RuntimeError):
    """A video referenced by the annotations is missing or cannot be decoded; ``err.path`` names it."""

    def __init__(self, message: str, path: str | os.PathLike | None = None):
        super().__init__(message)
        self.path = None if path is None else str(path)

    def __reduce__(self):  # keep ``path`` when the error crosses from a DataLoader worker
        return (type(self), (str(self), self.path))


@dataclass(frozen=True)
class VideoFrames:
    """Decoded frames: ``frames`` uint8 ``[T, H, W, 3]``, plus the video's frame count and average fps."""

    frames: np.ndarray
    num_frames: int
    fps: float


# ----------------------------------------------------------------------------------------------------- sampling
def sample_middle_indices(num_frames: int, vlen: int) -> list[int]:
    """UMT's eval sampling: split ``[0, vlen)`` into ``min(num_frames, vlen)`` equal segments, take each one's centre.

    Segment ``i`` spans ``[e_i, e_{i+1} - 1]`` with ``e = int(linspace(0, vlen, n + 1))``; its centre is
    ``(e_i + e_{i+1} - 1) // 2``. Fewer than ``num_frames`` frames: the last index is repeated to fill.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if vlen < 1:
        raise ValueError(f"a video needs at least one frame, got vlen={vlen}")
    n = min(num_frames, vlen)
    edges = np.linspace(0, vlen, n + 1).astype(int)
    indices = [int((edges[i] + edges[i + 1] - 1) // 2) for i in range(n)]
    return indices + [indices[-1]] * (num_frames - n)


def trimmed_length(vlen: int, fps: float, max_seconds: float = 30.0) -> int:
    """Frames UMT samples from with ``trimmed30``: ``int(max_seconds * fps)`` when the video is longer, else all."""
    if fps > 0 and vlen / fps > max_seconds:
        return int(max_seconds * fps)
    return vlen


# ------------------------------------------------------------------------------------------------------ readers
def _import_reader(name: str):
    """The reader's module, or an ImportError/RuntimeError/OSError saying why it cannot be used."""
    if name == "decord":
        import decord

        return decord
    if name == "pyav":
        import av

        return av
    if name == "torchcodec":
        # older torchcodec raises RuntimeError ("Could not load libtorchcodec") at import when FFmpeg or a matching
        # torch is missing; newer ones import fine and record it, failing only at the first decode
        from torchcodec._core import ops
        from torchcodec.decoders import VideoDecoder

        if not getattr(ops, "_FFMPEG_AVAILABLE", True):
            raise RuntimeError("torchcodec cannot load FFmpeg (it needs FFmpeg 4-9 shared libraries installed)")
        return VideoDecoder
    raise ValueError(f"unknown video reader {name!r}; choose one of {', '.join(READERS)}")


def available_readers() -> dict[str, str | None]:
    """``{reader: None if it loads, else why not}`` for decord, PyAV and torchcodec."""
    status: dict[str, str | None] = {}
    for name in ("decord", "pyav", "torchcodec"):
        try:
            _import_reader(name)
            status[name] = None
        except (ImportError, RuntimeError, OSError) as e:
            status[name] = f"{type(e).__name__}: {e}".splitlines()[0]
    return status


def resolve_reader(name: str) -> str:
    """The concrete reader ``name`` stands for (``auto``: first loadable of decord, torchcodec, PyAV).

    Raises ImportError naming the install to do when the requested reader cannot be loaded.
    """
    if name not in READERS:
        raise ValueError(f"dataset.video_reader={name!r} is not one of {', '.join(READERS)}")
    candidates = _AUTO_ORDER if name == "auto" else (name,)
    reasons = []
    for candidate in candidates:
        try:
            _import_reader(candidate)
            return candidate
        except (ImportError, RuntimeError, OSError) as e:
            reasons.append(f"{candidate}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    raise ImportError(
        f"video reader {name!r} is not usable ({'; '.join(reasons)}). Install one with "
        "`pip install decord` or `pip install av` (or torchcodec with FFmpeg 4-9 shared libraries), "
        "or pick another with dataset.video_reader=decord|pyav|torchcodec|auto."
    )


def _header_frame_count(path: str) -> int | None:
    """The frame count the container's header states (PyAV reads the header only), or None when it states none
    or PyAV is not installed."""
    try:
        av = _import_reader("pyav")
        with av.open(path) as container:
            frames = container.streams.video[0].frames if container.streams.video else 0
    except (ImportError, OSError, ValueError):  # av.FFmpegError subclasses OSError / ValueError
        return None
    return int(frames) or None


def _check_count(found: int, claimed: int | None, reader: str) -> None:
    if claimed is not None and found < claimed:
        raise ValueError(f"the container claims {claimed} frames but {reader} finds only {found} "
                         "(truncated or damaged file)")


def _read_decord(path: str, choose) -> VideoFrames:
    decord = _import_reader("decord")
    reader = decord.VideoReader(path, num_threads=1)
    vlen, fps = len(reader), float(reader.get_avg_fps())
    _check_count(vlen, _header_frame_count(path), "decord")  # decord counts the frames it can index, silently
    indices = choose(vlen, fps)
    frames = reader.get_batch(indices).asnumpy()
    reader.seek(0)  # releases decord's decode buffers (known leak after get_batch)
    return VideoFrames(frames, vlen, fps)


def _pyav_frame_count(container, stream) -> int:
    if stream.frames > 0:
        return int(stream.frames)
    # containers without a frame count in the header: count the stream's packets (demux only, no decode)
    count = sum(1 for packet in container.demux(stream) if packet.size > 0)
    container.seek(0)
    return count


def _read_pyav(path: str, choose) -> VideoFrames:
    av = _import_reader("pyav")
    with av.open(path) as container:
        if not container.streams.video:
            raise ValueError("no video stream")
        stream = container.streams.video[0]
        vlen = _pyav_frame_count(container, stream)
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else 0.0
        indices = choose(vlen, fps)
        wanted = set(indices)
        decoded: dict[int, np.ndarray] = {}
        count = 0
        # decoded to the end, not only to the last wanted frame: a file that holds fewer frames than its header
        # claims is corrupt, whichever frames a clip samples
        for i, frame in enumerate(container.decode(stream)):
            if i in wanted:
                decoded[i] = frame.to_ndarray(format="rgb24")
            count = i + 1
    _check_count(count, vlen, "PyAV")
    return VideoFrames(np.stack([decoded[i] for i in indices]), vlen, fps)


def _read_torchcodec(path: str, choose) -> VideoFrames:
    VideoDecoder = _import_reader("torchcodec")
    decoder = VideoDecoder(path, dimension_order="NHWC", num_ffmpeg_threads=1, device="cpu", seek_mode="exact")
    vlen = len(decoder)  # exact mode: the frames found by scanning the file
    _check_count(vlen, getattr(decoder.metadata, "num_frames_from_header", None), "torchcodec")
    fps = float(decoder.metadata.average_fps or 0.0)
    indices = choose(vlen, fps)
    frames = decoder.get_frames_at(indices=list(indices)).data.numpy()
    return VideoFrames(frames, vlen, fps)


def truncation(path: str | os.PathLike) -> str | None:
    """Why an MP4/MOV file (ISO base media: it starts with an ``ftyp`` box) is cut short, or None.

    Its top-level boxes must tile the file: a box that ends past the end of the file means the file was truncated
    (a "faststart" file keeps its complete index in front, so readers would otherwise take the missing frames for
    present). Other containers give None (their readers' frame counts are checked instead).
    """
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if fh.read(8)[4:8] != b"ftyp":
            return None
        position = 0
        while position < size:
            fh.seek(position)
            head = fh.read(16)
            if len(head) < 8:
                return f"{size - position} stray bytes after the last box"
            box_size, kind = struct.unpack(">I4s", head[:8])
            if box_size == 1 and len(head) == 16:
                box_size = struct.unpack(">Q", head[8:16])[0]
            elif box_size == 0:  # the last box runs to the end of the file
                return None
            if box_size < 8:
                return f"the box at byte {position} has an impossible size {box_size}"
            if position + box_size > size:
                return (f"its {kind.decode('latin-1')!r} box ends at byte {position + box_size} but the file has "
                        f"{size} bytes (truncated)")
            position += box_size
    return None


_READ = {"decord": _read_decord, "pyav": _read_pyav, "torchcodec": _read_torchcodec}


def read_frames(path: str | os.PathLike, indices_for, reader: str = "decord") -> VideoFrames:
    """Decode the frames ``indices_for(vlen, fps)`` picks from ``path`` with ``reader``.

    Raises :class:`CorruptVideoError` naming ``path`` when the file is missing, is a directory, is truncated
    (:func:`truncation`), holds fewer decodable frames than its container claims, or cannot be decoded.
    """
    path = Path(path)
    name = resolve_reader(reader)
    if path.is_dir():
        raise CorruptVideoError(f"Expected a video file, found a directory: {path}. Check the annotation entry and "
                                "dataset.video_dir.", path)
    if not path.is_file():
        raise CorruptVideoError(f"Video not found: {path}. Check dataset.video_dir (run `python -m "
                                "repshift.data.check dataset=<name>` to list every missing video).", path)

    def choose(vlen: int, fps: float) -> list[int]:
        if vlen < 1:
            raise ValueError("the video has no frames")
        return list(indices_for(vlen, fps))

    try:
        cut = truncation(path)
        if cut:
            raise ValueError(cut)
        return _READ[name](str(path), choose)
    except CorruptVideoError:
        raise
    except Exception as e:  # decoders raise their own types (decord.DECORDError, av.FFmpegError, RuntimeError)
        raise CorruptVideoError(
            f"Corrupt or unreadable video: {path} ({name}: {type(e).__name__}: {e}). Replace the file, or set "
            "dataset.skip_corrupt=true to leave it out of the evaluation (it is counted as skipped).",
            path,
        ) from e


# ---------------------------------------------------------------------------------------------------- transform
def resize_normalize(
    frames: np.ndarray | torch.Tensor,
    img_size: int = 224,
    antialias: bool = False,
    mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
    std: Sequence[float] = IMAGENET_DEFAULT_STD,
) -> torch.Tensor:
    """uint8 ``[T, H, W, 3]`` frames -> float ``[T, 3, img_size, img_size]``: bicubic resize, /255, mean/std.

    The resize is what torchvision's tensor ``Resize`` did to uint8 frames in UMT's environment: bicubic in float,
    rounded and clamped back to 0..255, and only then scaled to [0, 1].
    """
    video = torch.as_tensor(frames).permute(0, 3, 1, 2).float()
    video = F.interpolate(video, size=(img_size, img_size), mode="bicubic", align_corners=False, antialias=antialias)
    video = video.round_().clamp_(0, 255).div_(255.0)
    mean_t = torch.tensor(mean, dtype=video.dtype).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=video.dtype).view(1, 3, 1, 1)
    return video.sub_(mean_t).div_(std_t)


@dataclass(frozen=True)
class ClipLoader:
    """``loader(path) -> float [num_frames, 3, img_size, img_size]``: UMT's evaluation clip of one video.

    Picklable, so it runs inside DataLoader workers. ``sampling`` is ``"middle"`` (the only eval sampling UMT
    uses); ``trimmed30`` samples from the first 30 s only (DiDeMo).
    """

    num_frames: int = 12
    img_size: int = 224
    sampling: str = "middle"
    trimmed30: bool = False
    reader: str = "decord"
    antialias: bool = False

    def __post_init__(self):
        if self.sampling != "middle":
            raise ValueError(f"dataset.sampling={self.sampling!r}: only 'middle' (UMT's evaluation sampling) is supported")
        if self.reader not in READERS:
            raise ValueError(f"dataset.video_reader={self.reader!r} is not one of {', '.join(READERS)}")

    def indices(self, vlen: int, fps: float) -> list[int]:
        """Frame indices sampled from a video of ``vlen`` frames at ``fps``."""
        if self.trimmed30:
            vlen = trimmed_length(vlen, fps)
        return sample_middle_indices(self.num_frames, vlen)

    def read(self, path: str | os.PathLike) -> VideoFrames:
        """The sampled uint8 frames of ``path`` (raises :class:`CorruptVideoError`)."""
        return read_frames(path, self.indices, self.reader)

    def blank(self) -> torch.Tensor:
        """Zeros shaped like a clip: what a skipped video yields."""
        return torch.zeros(self.num_frames, 3, self.img_size, self.img_size)

    def __call__(self, path: str | os.PathLike) -> torch.Tensor:
        return resize_normalize(self.read(path).frames, self.img_size, antialias=self.antialias)

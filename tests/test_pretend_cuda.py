"""The pretend-CUDA harness keeps CUDA's rules: placement, copies, syncs, autocast, streams."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pretend_cuda import CUDA, MIXED, NUMPY, PretendCuda, on_device
from torch import nn
from torchvision.io import decode_jpeg
from torchvision.ops import roi_align

from CtP.train import make_loader
from fedvssl.evaluation import pick_device


def test_cuda_is_there_inside_and_gone_after() -> None:
    with PretendCuda():
        assert torch.cuda.is_available() and torch.cuda.device_count() == 1
        assert torch.accelerator.current_accelerator() == torch.device("cuda")
        assert pick_device() == torch.device("cuda")  # the package's own device choice
    assert not torch.cuda.is_available()
    assert "pin_memory" not in vars(torch.Tensor) and torch.autocast is torch.amp.autocast
    assert torch.amp.autocast is torch.amp.autocast_mode.autocast


def test_tensors_made_or_moved_there_report_cuda_and_keep_it(pretend_cuda: PretendCuda) -> None:
    made = torch.zeros(2, 3, device="cuda")
    host = torch.ones(2, 3)
    moved = host.to("cuda")
    assert made.device == CUDA and made.is_cuda and not made.is_cpu and made.get_device() == 0
    assert moved is not host and moved.device == CUDA and host.device.type == "cpu"
    assert host.cuda().is_cuda and host.to(made).is_cuda and host.type_as(made).is_cuda
    derived = [made + moved, (made * 2)[0], torch.stack([made, moved]), made.view(3, 2).T]
    assert all(t.device == CUDA for t in derived)
    assert moved.cpu().device.type == "cpu" and moved.to("cpu").device.type == "cpu"
    model = nn.Linear(3, 4).to("cuda")
    assert all(p.device == CUDA for p in model.parameters())
    with pytest.raises(RuntimeError, match="invalid device ordinal"):
        torch.zeros(1, device="cuda:1")


def test_mixing_devices_raises_cudas_error_with_its_exceptions(pretend_cuda: PretendCuda) -> None:
    device, host = torch.ones(4, device="cuda"), torch.ones(4)
    for mix in (
        lambda: device + host,
        lambda: torch.stack([device, host]),
        lambda: F.conv3d(torch.ones(1, 3, 2, 4, 4, device="cuda"), torch.ones(2, 3, 1, 1, 1)),
        lambda: roi_align(torch.ones(1, 2, 4, 4, device="cuda"), torch.zeros(1, 5), 2),
        lambda: device.copy_(host).add_(host),
    ):
        with pytest.raises(RuntimeError, match=MIXED.split(",")[0]):
            mix()
    assert (device + torch.tensor(2.0)).is_cuda  # a CPU scalar tensor is a scalar to CUDA
    assert device[torch.tensor([0, 2])].is_cuda  # CPU indices into a device tensor: allowed
    with pytest.raises(IndexError, match="indices should be either on cpu or on the same device"):
        host[torch.tensor([0, 2], device="cuda")]
    with pytest.raises(TypeError, match=NUMPY.split(".")[0]):
        device.numpy()
    with pytest.raises(TypeError, match="can't convert cuda:0"):
        np.asarray(device)
    assert device.cpu().numpy().tolist() == [1.0] * 4


def test_host_waits_and_copies_are_recorded(pretend_cuda: PretendCuda) -> None:
    host = torch.arange(6.0)
    pinned = host.pin_memory()
    assert pinned.is_pinned() and not host.is_pinned() and torch.equal(pinned, host)
    assert pinned[2:].view(2, 2).is_pinned()  # views of pinned memory are pinned
    with pytest.raises(RuntimeError, match="only dense CPU tensors can be pinned"):
        pinned.to("cuda").pin_memory()
    pretend_cuda.reset()
    record = pretend_cuda.record
    pinned.to("cuda", non_blocking=True)  # the one kind of upload the host does not wait for
    assert record.syncs == [] and record.h2d()[-1].pinned and record.h2d()[-1].non_blocking
    host.to("cuda", non_blocking=True)  # pageable: the host waits while the driver stages it
    host.to("cuda")  # blocking
    torch.tensor([1.0, 2.0], device="cuda")  # from Python data: a blocking copy too
    device = torch.zeros(3, device="cuda")  # filled on the device: no copy, no wait
    assert len(record.syncs) == 3 and len(record.h2d()) == 4
    float(device.sum()), device.tolist(), bool(device.any()), device.cpu()
    device[device > 0]  # a boolean mask: the output's size is the mask's count
    assert len(record.syncs) == 8
    torch.cuda.synchronize()
    assert record.syncs[-1] == "torch.cuda.synchronize"


def test_loader_pins_batches_in_its_own_thread(pretend_cuda: PretendCuda) -> None:
    data = [{"x": torch.full((2,), float(i))} for i in range(4)]
    for workers in (0, 1):
        loader = make_loader(data, batch_size=2, workers=workers, shuffle=False, pin_memory=True)  # type: ignore[arg-type]
        batches = list(loader)
        assert len(batches) == 2 and all(b["x"].is_pinned() for b in batches)


def test_cuda_autocast_casts_as_cuda_does(pretend_cuda: PretendCuda) -> None:
    torch.manual_seed(0)
    conv = nn.Conv3d(3, 4, 3, padding=1).to("cuda")
    x = torch.randn(2, 3, 4, 6, 6, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = conv(x)
        pooled = F.relu(y).mean(dim=(2, 3, 4))
        total = (pooled * 1.0).sum()
        loss = F.smooth_l1_loss(pooled, torch.zeros_like(pooled))
    assert y.dtype == torch.bfloat16 and y.is_cuda and pooled.dtype == torch.bfloat16
    assert total.dtype == loss.dtype == torch.float32  # sums and losses run in float32
    with torch.autocast("cuda", dtype=torch.bfloat16):  # torchvision's rule: float32 inside
        pooled_rois = roi_align(y, torch.tensor([[0.0, 0, 0, 4, 4]], device="cuda"), 2)
    assert pooled_rois.dtype == torch.bfloat16 and pooled_rois.is_cuda
    torch.testing.assert_close(y.float(), conv(x), rtol=0.02, atol=0.02)  # bf16 rounding only
    loss.backward()
    assert conv.weight.grad is not None and conv.weight.grad.dtype == torch.float32
    assert conv.weight.grad.is_cuda and torch.isfinite(conv.weight.grad).all()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert conv(x).dtype == torch.float32  # CPU autocast does not touch device ops
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=False):
        assert conv(x).dtype == torch.float32
    assert pretend_cuda.record.autocast == [torch.bfloat16] * 2


def test_optimizer_and_clipping_stay_on_the_device_without_waiting(
    pretend_cuda: PretendCuda,
) -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1)).to("cuda")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    pretend_cuda.reset()
    for _ in range(2):
        loss = model(torch.ones(5, 3, device="cuda")).square().mean()
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    assert pretend_cuda.record.syncs == [] and pretend_cuda.record.copies == []
    assert pretend_cuda.record.device_ops["_foreach_add_"] > 0  # the CUDA (foreach) branch
    assert all(p.is_cuda and p.grad is not None and p.grad.is_cuda for p in model.parameters())
    state = optimizer.state[next(model.parameters())]["momentum_buffer"]
    assert state.is_cuda


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torchvision's codecs
def test_streams_record_what_cuda_would_race_on(pretend_cuda: PretendCuda) -> None:
    hazards = pretend_cuda.record.hazards
    main, side = torch.cuda.current_stream(), torch.cuda.Stream()
    with torch.cuda.stream(side):
        made = torch.ones(3, device="cuda") * 2
    made + 1  # neither waited for nor recorded
    assert len(hazards) == 2 and "before waiting" in hazards[0] and "record_stream" in hazards[1]
    with torch.cuda.stream(side):
        again = torch.ones(3, device="cuda") * 2
    main.wait_stream(side)
    again.record_stream(main)
    again + 1
    assert len(hazards) == 2
    jpeg = torch.from_numpy(cv2.imencode(".jpg", np.full((8, 8, 3), 90, np.uint8))[1].ravel())
    decode_jpeg([jpeg], device="cuda")  # the main stream has kernels queued: a hazard
    assert len(hazards) == 3 and "pytorch/vision#9606" in hazards[2]
    torch.cuda.synchronize()
    decode_jpeg([jpeg], device="cuda")
    with torch.cuda.stream(torch.cuda.Stream()):  # a stream with nothing queued
        decode_jpeg([jpeg], device="cuda")
    assert len(hazards) == 3


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_nvjpeg_stand_in_decodes_as_the_cpu_behind_torchvisions_checks(
    pretend_cuda: PretendCuda,
) -> None:
    rng = np.random.default_rng(0)
    image = cv2.resize(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), (32, 24))
    jpeg = torch.from_numpy(cv2.imencode(".jpg", image)[1].ravel())
    decoded = decode_jpeg([jpeg, jpeg], device="cuda")
    expected = decode_jpeg(jpeg)  # the CPU decoder
    assert all(on_device(d) and d.dtype == torch.uint8 for d in decoded)
    assert torch.equal(decoded[1].cpu(), expected) and pretend_cuda.record.decodes == [2]
    with pytest.raises(ValueError, match="Input list must contain tensors on CPU"):
        decode_jpeg([jpeg.to("cuda")], device="cuda")
    with pytest.raises(RuntimeError, match=r"Expected a torch\.uint8 tensor"):
        decode_jpeg([jpeg.float()], device="cuda")

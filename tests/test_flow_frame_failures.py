"""A frame that runs out of memory in a Prefect flow run fails alone, as in ``starnet
transform`` (test_outputs.py): the flow goes on with the next frames."""

from __future__ import annotations

import pytest
import torch
from prefect_fixtures import PipelineEnv, write_fits

from flows.provenance import ProvenanceDB


@pytest.mark.usefixtures("prefect_harness")
def test_out_of_memory_fails_that_frame_not_the_flow(
    pipeline_env: PipelineEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    import flows.frame as frame
    from flows.pipeline import FramesFailedError, process_folder

    env = pipeline_env
    frames = [str(write_fits(env.incoming / f"{n}.fits", seed=i)) for i, n in enumerate("ef")]
    real = frame.process_array
    calls = []

    def first_runs_out(*args: object, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(frame, "process_array", first_runs_out)
    with pytest.raises(FramesFailedError, match="1 of 2") as caught:
        process_folder(paths=frames, config=env.config)
    assert [r["status"] for r in caught.value.results] == ["failed", "succeeded"]
    failed = caught.value.results[0]
    assert "e.fits: out of memory (try a smaller inference.tile_px" in failed["error"]
    runs = {r.frame_path: r for r in ProvenanceDB.from_settings(env.settings).list_runs()}
    assert runs[frames[0]].status == "failed" and runs[frames[1]].status == "succeeded"
    assert "out of memory" in (runs[frames[0]].error or "")

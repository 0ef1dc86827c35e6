"""Latent walks and turntables: frame counts, the cameras and identities they show, files that play back."""
import imageio.v3 as iio
import numpy as np
import pytest
import torch
from PIL import Image

from avatar3d.evaluation.walk import latent_walk, render_frames, save_outputs, seeds_to_ws, turntable, write_video
from tests.evaluation.helpers import micro_generator

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def G():
    return micro_generator()


def test_walk_passes_through_each_seed_with_the_camera_swinging(G):
    walk = latent_walk(G, [5, 7, 9], frames_per_seed=4, grid_columns=3, yaw_amplitude=60, pitch_amplitude=0)
    assert walk.frames.shape == (12, 32, 32, 3) and walk.frames.dtype == np.uint8
    ws = seeds_to_ws(G, [5, 7, 9])
    # Frame 4k is seed k seen from the front (the swing is at 0 at each segment start).
    np.testing.assert_array_equal(walk.frames[[0, 4, 8]], render_frames(G, ws, [0, 0, 0], [0, 0, 0]))
    # Frame 1 is a quarter swing: 60 deg to the side, a quarter of the way to seed 7.
    quarter = torch.lerp(ws[:1], ws[1:2], 0.25)
    np.testing.assert_array_equal(walk.frames[1], render_frames(G, quarter, [60.0], [0.0])[0])
    # Grid: 2 transitions x 3 columns; row 0 starts at seed 5 seen from -60 deg, ends at seed 7 from +60.
    assert walk.grid.shape == (2 * 32, 3 * 32, 3)
    np.testing.assert_array_equal(walk.grid[:32, :32], render_frames(G, ws[:1], [-60.0], [0.0])[0])
    np.testing.assert_array_equal(walk.grid[:32, 64:], render_frames(G, ws[1:2], [60.0], [0.0])[0])
    again = latent_walk(G, [5, 7, 9], frames_per_seed=4, grid_columns=3, yaw_amplitude=60, pitch_amplitude=0)
    np.testing.assert_array_equal(again.frames, walk.frames)  # deterministic renders


def test_turntable_orbits_one_identity(G):
    spin = turntable(G, seed=3, frames=8, pitch=10.0)
    ws = seeds_to_ws(G, [3])
    assert spin.frames.shape == (8, 32, 32, 3) and spin.grid.shape == (32, 8 * 32, 3)
    np.testing.assert_array_equal(spin.frames[2], render_frames(G, ws, [90.0], [10.0])[0])
    assert not np.array_equal(spin.frames[0], spin.frames[4])  # front and back differ


def test_outputs_are_a_grid_png_and_videos_that_play_back(G, tmp_path):
    walk = save_outputs(latent_walk(G, [0, 1], frames_per_seed=3, grid_columns=2), tmp_path, "walk")
    names = sorted(p.name for p in walk.files)
    assert names == ["walk.gif", "walk.mp4", "walk_grid.png"]
    assert np.array_equal(np.asarray(Image.open(tmp_path / "walk_grid.png")), walk.grid)
    gif = iio.imread(tmp_path / "walk.gif", index=None)
    assert gif.shape[:3] == (6, 32, 32)
    # GIF keeps 256 colours per frame: close to the frames, far from a different frame.
    err = [np.abs(gif[i][..., :3].astype(int) - walk.frames[i].astype(int)).mean() for i in range(6)]
    assert max(err) < 4 and np.abs(walk.frames[0].astype(int) - walk.frames[3].astype(int)).mean() > 4 * max(err)
    mp4 = iio.imread(tmp_path / "walk.mp4", index=None, plugin="FFMPEG")
    assert mp4.shape == (6, 32, 32, 3)
    # Lossy H.264 on 32 px frames (chroma at half resolution): each decoded frame is far closer to its
    # own frame than neighbouring frames are to each other.
    err = [np.abs(mp4[i].astype(int) - walk.frames[i].astype(int)).mean() for i in range(6)]
    assert max(err) < 0.5 * np.abs(walk.frames[0].astype(int) - walk.frames[1].astype(int)).mean()


def test_bad_requests_fail_clearly(G, tmp_path):
    with pytest.raises(ValueError, match="at least 2 seeds"):
        latent_walk(G, [1])
    with pytest.raises(ValueError, match="frames"):
        turntable(G, 0, frames=1)
    with pytest.raises(ValueError, match=r"\.gif or \.mp4"):
        write_video(np.zeros((2, 8, 8, 3), np.uint8), tmp_path / "x.avi")
    with pytest.raises(ValueError, match="even frame sizes"):
        write_video(np.zeros((2, 9, 9, 3), np.uint8), tmp_path / "x.mp4")

"""mp4 videos written frame by frame with imageio; a failure warns once and never stops a run."""

import os
import warnings

import numpy as np

# Frames come from render_mode="rgb_array", which needs no display: this stops pygame (gymnasium's
# classic-control and Box2D renderers) from looking for one on a headless machine.
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")


class VideoWriter:
    """`add(frame)` streams RGB frames to `path`; after an error it warns once and writes no more."""

    def __init__(self, path: str, fps: int = 30):
        self.path = path
        self.fps = fps
        self.writer = None
        self.failed = False

    def add(self, frame) -> None:
        try:
            if self.writer is None and not self.failed:
                import imageio.v2 as imageio  # only runs that record pay for the import

                os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
                # macro_block_size=1 keeps odd frame sizes as they are instead of resizing
                self.writer = imageio.get_writer(self.path, fps=self.fps, macro_block_size=1)
            if not self.failed:
                self.writer.append_data(np.asarray(frame, dtype=np.uint8))
        except Exception as e:
            self._fail(e)

    def close(self) -> None:
        try:
            if self.writer is not None and not self.failed:
                self.writer.close()
        except Exception as e:
            self._fail(e)

    def _fail(self, error: Exception) -> None:
        self.failed = True
        warnings.warn(f"video {self.path} not written: {type(error).__name__}: {error}", stacklevel=3)

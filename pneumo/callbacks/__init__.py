"""Lightning callbacks of pneumo."""

from pneumo.callbacks.gradcam_overlay import GradCamOverlayCallback

__all__ = ["GradCamOverlayCallback"]

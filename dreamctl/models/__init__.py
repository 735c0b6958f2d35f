"""Networks that predict the noise eps from (x_t, t)."""

from dreamctl.models.unet import UNet, build_model, count_parameters

__all__ = ["UNet", "build_model", "count_parameters"]

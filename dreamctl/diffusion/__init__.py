"""Diffusion maths: schedules, training losses and samplers."""

from dreamctl.diffusion.schedule import NoiseSchedule, make_schedule, schedule_for

__all__ = ["NoiseSchedule", "make_schedule", "schedule_for"]

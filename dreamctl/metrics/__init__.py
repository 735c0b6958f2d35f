"""Image metrics: FID, KID, IS (Inception), LPIPS diversity, and weight-free SWD and 8x8-pixel FD.

Modules: `registry` (what is known of each metric: its name, weight files, spread, description),
`weights` (the weight files `dreamctl weights` lists), `download` (fetching them), `inception`
(feature networks), `stats` (Fréchet distance, KID, IS maths), `lpips_diversity`, `swd`, `pixel_fd`,
`spread` (what each metric's std is a spread over), `inputs` (`metric_inputs`: which metrics can be computed,
with their loaded networks, or why not) and
`image_sets` (`evaluate_image_sets`, the one entry point that computes a metric set).
Nothing is imported here, so `import dreamctl.metrics.registry` and `.weights` stay free of torch.
"""

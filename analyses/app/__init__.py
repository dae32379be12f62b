"""The application on top of the toolkit: the `ar2mdm` command line (`cli`) and the study
(`study`: ARM -> conversion -> samplers -> ARM vs MDM comparison -> report, in cached stages)."""

"""Images: size limits, PNG/JPEG and DICOM decoding to 8-bit grey, and the one preprocessing chain."""

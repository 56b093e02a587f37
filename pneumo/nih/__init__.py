"""NIH ChestX-ray14 metadata: the shipped files, findings, the label index, patient-disjoint splits, boxes, the adjudicated reference."""

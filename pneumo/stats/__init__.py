"""Statistics a reviewer accepts: metrics, patient-bootstrap intervals, operating points, temperature, subgroups."""

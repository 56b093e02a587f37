"""Networks and the LightningModule."""

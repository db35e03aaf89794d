"""Staples carried across an air gap: the want file and the bundle (``format``), making the want
(``want``), fetching on the connected side (``fetch``), checking and handing a bundle to the
service (``importer``), the service's side of that hand-over (``inbox``), and the CLI edge
(``commands``)."""

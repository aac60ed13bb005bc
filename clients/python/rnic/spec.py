"""pyverbs.spec: flow specifications, plain holders (rnicd offers no flow steering)."""
from ._unsupported import attr_classes

attr_classes(globals(), "Spec", "EthSpec", "Ipv4ExtSpec", "Ipv6Spec", "TcpUdpSpec")

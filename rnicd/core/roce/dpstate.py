"""State a QP shares with the data plane: attributes of core/'s objects that live in the
QP's struct rnic_dp_qp (native/include/rnic_dp.h), so that there is one copy of each."""


def dp_field(name: str, doc: str, kind=int):
    """A property stored in self.dp.<name> (cffi struct field), converted with `kind`."""
    return property(lambda self: getattr(self.dp, name),
                    lambda self, v: setattr(self.dp, name, kind(v)), doc=doc)

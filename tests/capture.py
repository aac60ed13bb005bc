"""A tshark capture on lo around a block of traffic (the tests that dissect live packets)."""
import contextlib
import subprocess
import time


@contextlib.contextmanager
def capture_on_lo(pcap, host: str, tshark: str = "tshark"):
    """tshark writes the RoCEv2 datagrams to or from host into pcap while the block runs."""
    cap = subprocess.Popen([tshark, "-i", "lo", "-f", f"udp port 4791 and host {host}",
                            "-w", str(pcap), "-q"], stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE)
    try:
        time.sleep(1.5)                 # the capture must run before the first packet
        yield
        time.sleep(1.0)                 # the last packets reach the file
    finally:
        cap.terminate()
        cap.wait(10)

"""What a file that came where an image was meant is, said without quoting it: a web page a download answered with, an
archive, a video beside a phone's photo, a Mac's metadata copy, a scanner's DICOM file."""

from __future__ import annotations

# files that come where an image was meant (a download that answered with a web page, an archive): named by their
# signature, where the first bytes were shown, which put a reply's or a linked file's contents in a results file
_SIGNATURES = ((b"%PDF", "a PDF"), (b"PK\x03\x04", "a zip archive"), (b"\x1f\x8b", "gzip-compressed data"),
               (b"{", "JSON text"), (b"[", "JSON text"))


# an ISO media file's brands of still images (HEIC, HEIF, AVIF and their sequences); others (qt, isom, mp42...) are videos
_HEIF_BRANDS = {"heic", "heix", "heim", "heis", "hevc", "hevx", "mif1", "msf1", "avif", "avis"}


def kind_of_file(data: bytes) -> str:
    """What ``data`` that is no image looks like, without quoting it."""
    head = data[:512].lstrip()
    if head[:15].lower().startswith((b"<!doctype html", b"<html")):
        return "a web page (HTML)"
    if b"<svg" in head.lower():  # a logo or an icon drawn as vectors, often after an <?xml ...?> line or a comment
        return "an SVG drawing (vectors, no pixels): convert it to PNG first"
    if data[128:132] == b"DICM":  # a scanner's file: its pixels want a window (levels) chosen for them
        return "a DICOM file: convert it to PNG first (pydicom reads it, with its window applied)"
    if data[4:8] == b"ftyp":
        brand = data[8:12].decode("ascii", "replace").strip()
        if brand in _HEIF_BRANDS:  # pillow-heif reads these: this one is damaged, or cut short in a transfer
            return f"a HEIF photo ({brand}) that cannot be decoded: damaged, or cut short (copy it again from the phone)"
        return f"a video ({brand}{': QuickTime, as a Live Photo is beside its photo' * (brand == 'qt')}), not a photo"
    if data[:4] == b"\x00\x05\x16\x07":  # AppleDouble: a Mac's copy of a photo's metadata, written where it cannot keep it
        return "a macOS metadata file (AppleDouble, a '._' copy), not the photo"
    kind = next((name for signature, name in _SIGNATURES if head.startswith(signature)), None)
    text = head.decode("utf-8", errors="ignore")  # a character the 512 bytes cut is left out, not a reason to say bytes
    if kind is None and text and len(text.encode()) >= len(head) - 3 and (text.replace("\t", "").replace("\r", "")
                                                                            .replace("\n", "").isprintable()):
        kind = "text"
    return kind or f"its first bytes are {data[:4].hex(' ')}"

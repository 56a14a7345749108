"""What every other part stands on: errors meant for the user, hostile-file I/O (bounded reads, atomic
writes), settings, the workspace folders, process identity, guess limiting, page work slots, the device
and precision helpers (accel), torchrun's world (distributed), downloads and the one way numbers are
formatted (figures).

May import: nothing else in core.
"""

from .folder import FolderDepthDataset, write_folder_sample  # noqa: E402,F401
from .sequences import KittiRawSequences, VideoFolderSequences  # noqa: E402,F401
from .training_sets import HypersimDataset, TartanAirDataset, VirtualKitti2Dataset  # noqa: E402,F401

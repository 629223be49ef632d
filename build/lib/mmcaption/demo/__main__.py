from mmcaption.demo.run import main

main()
